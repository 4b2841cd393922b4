"""Groundedness of both answers of a RAG challenger's shadow pairs, for the online gate's
``online.groundedness_drop`` (``llmops.online_rules``): each row's answer against the text of the
chunks it logged as its sources, read from its own release's index (a challenger may answer from
another index than the champion's). The measure is the live monitor's: ``faithfulness``, the share
of an answer's sentences whose content words its sources hold."""

from __future__ import annotations

from typing import Any

from llmops.online_rules import ShadowEvidence


def add_groundedness(evidence: ShadowEvidence, registry_name: str) -> tuple[ShadowEvidence, str]:
    """``evidence`` with ``groundedness`` on each answered row whose sources its release's index
    holds (a row that has one keeps it), and a note of what was scored. Rows without answer text
    (``LLMOPS_LOG_TEXT=false``) cannot be scored: the rule is then not applied, saying so."""
    from llmops.llm.lm_eval import faithfulness
    from llmops.rag.index import chroma_client, open_index
    from llmops.rag.monitor_sources import RagRequest, grounded_requests
    from llmops.rag.release import load_release
    from llmops.registry import Registry

    if evidence.kind != "rag_request" or not evidence.pairs:
        return evidence, "no RAG pairs to score"
    pairs = [(dict(c), dict(s)) for c, s in evidence.pairs]
    notes = []
    for side, version in ((0, evidence.champion_version), (1, evidence.challenger_version)):
        rows: dict[str, dict[str, Any]] = {
            str(p[side]["request_id"]): p[side] for p in pairs if p[side].get("groundedness") is None
        }
        if not rows:
            continue
        release, _ = load_release(Registry().get(registry_name, version))
        collection = open_index(chroma_client(release.chroma), release.index.version)
        requests = [RagRequest.model_validate(row) for row in rows.values()]
        found, why = grounded_requests(requests, collection)
        for request, contexts in found:
            grounded = faithfulness(request.answer or "", "\n\n".join(contexts))
            rows[request.request_id]["groundedness"] = grounded
        notes.append(f"{version}: {len(found)} of {len(rows)} answers scored" + (f" ({why})" if why else ""))
    return evidence.model_copy(update={"pairs": pairs}), "; ".join(notes) or "every row carried groundedness"
