from __future__ import annotations

import pytest

from dist_face.registry import Registry


def test_register_get_and_errors() -> None:
    reg: Registry[type] = Registry("backbone")

    @reg.register()
    class A:
        pass

    reg.register("b")(int)
    assert reg.get("A") is A and reg.get("b") is int and reg.names() == ["A", "b"]
    with pytest.raises(KeyError, match="already registered"):
        reg.register("b")(float)
    with pytest.raises(KeyError, match=r"unknown backbone 'c'; known: A, b"):
        reg.get("c")
