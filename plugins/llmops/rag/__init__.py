"""RAG building blocks, importable without Metaflow (the flows and services/rag.py use them).

documents  load a folder of Markdown, text, HTML and PDF files; unreadable files are reported
chunking   split them with LangChain text splitters; chunks carry source, position, content hash
embeddings the offline sentence-transformers model, batched, as numpy and as LangChain embeddings
index      Chroma collections named by index version; reuse of embeddings by content hash
lexical    BM25 over an index's chunk texts (bm25s), the lexical half of hybrid retrieval
retriever  top-k search (dense, BM25 or both fused by rank) with metadata filters, also for LangChain
pipeline   retrieve → render the prompt (context as data) → generate: an answer with its sources
evaluation the golden set, hit@k / MRR, context coverage and precision, answer keys, ragas metrics
candidates generator candidates for a release, and the choice between them under the gate policy
golden_init a starter golden set drafted from a corpus (llmops rag golden init)
release    a RAG release in the registry: index + retrieval + embedding model + prompt + generator
"""
