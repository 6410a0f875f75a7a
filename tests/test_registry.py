import pytest

from bench.api.errors import UserError
from bench.api.registry import ATTACKS, DEFENSES, METHODS, MODELS, TASKS, TIERS, Registry


def test_duplicate_names_raise():
    registry: Registry = Registry("widget")

    @registry.register("a")
    class A:
        pass

    with pytest.raises(ValueError, match="already registered"):

        @registry.register("a")
        class B:
            pass


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError) as error:
        METHODS.get("lorra", file="x.yaml", key="method.name")
    message = str(error.value)
    assert "x.yaml" in message and "method.name" in message and "lorra" in message
    assert "fft" in message and "lora" in message


def test_core_components_are_registered():
    assert {"open-source", "open-weight", "gray-box", "black-box"} <= set(TIERS.names())
    assert {"tiny-gpt2", "tiny-llama", "hf"} <= set(MODELS.names())
    assert {"synthetic-clinical", "synthetic-instructions", "local-file"} <= set(TASKS.names())
    assert {"fft", "lora"} <= set(METHODS.names())
    for registry in (TIERS, MODELS, TASKS, METHODS, ATTACKS, DEFENSES):
        for name in registry.names():
            cls = registry.get(name)
            assert cls.name == name
            assert hasattr(cls, "Config"), f"{registry.kind} {name} has no Config dataclass"


def test_the_loader_imports_every_module_of_a_plugin_package_whatever_its_name(tmp_path, monkeypatch):
    """No naming convention hides a module from the loader (issue 17): helpers and components alike."""
    import sys

    from bench.api import registry

    package = tmp_path / "layers_plugins_probe"
    (package / "sub").mkdir(parents=True)
    for path in ("__init__.py", "_helper.py", "component.py", "sub/__init__.py", "sub/_deep.py"):
        (package / path).write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "PLUGIN_PACKAGES", ("layers_plugins_probe",))
    monkeypatch.setattr(registry, "_loaded", False)
    for name in [m for m in sys.modules if m.startswith("layers_plugins_probe")]:
        monkeypatch.delitem(sys.modules, name)
    registry.load_plugins()
    names = {"layers_plugins_probe._helper", "layers_plugins_probe.component", "layers_plugins_probe.sub._deep"}
    assert names <= set(sys.modules)
