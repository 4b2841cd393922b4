"""Simulated production traffic for demos, tests and benchmarks (never used when serving)."""

from __future__ import annotations

import json

import httpx
import pandas as pd


def shift(frame: pd.DataFrame, columns: list[str], factor: float) -> pd.DataFrame:
    """A recalibrated instrument: ``columns`` read ``factor`` times higher than before."""
    shifted = frame.copy()
    shifted[columns] = shifted[columns] * factor
    return shifted


def send(
    url: str, frame: pd.DataFrame, target: str, batch: int = 10, headers: dict[str, str] | None = None
) -> pd.DataFrame:
    """POST ``frame`` (without the target) to ``{url}/predict`` in batches.

    Returns one row per record: request_id, row, the true label (the feedback a labelling
    team would send back later), the prediction and the model version that answered.
    """
    answers = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for start in range(0, len(frame), batch):
            chunk = frame.iloc[start : start + batch]
            records = json.loads(chunk.drop(columns=[target]).to_json(orient="records"))
            response = client.post("/predict", json={"records": records})
            response.raise_for_status()
            for row, (label, result) in enumerate(zip(chunk[target], response.json(), strict=True)):
                answers.append(
                    {
                        "request_id": result["request_id"],
                        "row": row,
                        target: label,
                        "prediction": result["prediction"],
                        "model_version": result["model_version"],
                    }
                )
    return pd.DataFrame(answers)
