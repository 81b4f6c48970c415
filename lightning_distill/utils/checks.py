"""Argument checks with messages that name the argument, the value received and what is allowed."""

from __future__ import annotations

__all__ = ["check_option"]


def check_option(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise a ``ValueError`` naming the config key when a constructor argument is invalid.

    Raises:
        ValueError: ``"`key` must be <allowed>, got <value>; set `model.init_args.<key>`."`` unless ``ok``.

    Example:
        >>> check_option(2 >= 1, "ratio", 2, "an integer >= 1")
        >>> check_option(0 >= 1, "ratio", 0, "an integer >= 1")
        Traceback (most recent call last):
        ...
        ValueError: `ratio` must be an integer >= 1, got 0; set `model.init_args.ratio`.
    """
    if not ok:
        raise ValueError(f"`{key}` must be {allowed}, got {value!r}; set `model.init_args.{key}`.")
