"""The engine layer: local training, the federated round loop, threat views, one run, a sweep, utility evaluation."""
