"""Card types of the llmops extension, one module per domain:

    tabular.py  llmops_data_profile, llmops_eval, llmops_drift
    rag.py      llmops_corpus, llmops_rag_eval, llmops_monitor
    llm.py      llmops_llm_eval
    gate.py     llmops_gate (every pipeline's gate decision)

Each renders from the task's artifacts, so a card can be re-rendered later with
``python flows/<flow>.py card view <step>`` or ``card create``. A card reads the artifacts its
class lists in ``artifacts``; a flow that names one differently maps it in the card's options
(``@card(type="llmops_eval", options={"eval_scores": "holdout_scores"})``).
"""

from .gate import GateCard
from .llm import LlmEvalCard
from .rag import CorpusCard, MonitorCard, RagEvalCard
from .tabular import DataProfileCard, DriftCard, EvalCard

CARDS = [DataProfileCard, EvalCard, GateCard, DriftCard, CorpusCard, RagEvalCard, MonitorCard, LlmEvalCard]
