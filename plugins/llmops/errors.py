"""Error messages that name the field: shared by every loader of user files."""

from __future__ import annotations

from pydantic import ValidationError


def field_problems(exc: ValidationError) -> str:
    """``questions.0.reference: Field required; k: ...``: each problem with the path to its field."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
