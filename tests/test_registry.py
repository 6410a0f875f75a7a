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
