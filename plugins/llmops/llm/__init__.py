"""LLM building blocks, importable without Metaflow.

generators  answer generation behind one interface: extractive (no LLM), a local transformers
            model folder, or any OpenAI-compatible endpoint; ``make_generator(spec)`` picks one
"""
