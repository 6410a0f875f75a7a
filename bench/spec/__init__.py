"""The spec layer: the scenario schema, its loading and binding, and size presets."""
