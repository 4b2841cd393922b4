"""RAG building blocks, importable without Metaflow (the flows and services/rag.py use them).

documents  load a folder of Markdown, text, HTML and PDF files; unreadable files are reported
chunking   split them with LangChain text splitters; chunks carry source, position, content hash
embeddings the offline sentence-transformers model, batched, as numpy and as LangChain embeddings
index      Chroma collections named by index version; reuse of embeddings by content hash
retriever  top-k search with metadata filters, also as a LangChain retriever
pipeline   retrieve → render the prompt (context as data) → generate: an answer with its sources
evaluation the golden set, hit@k / MRR, ragas metrics (non-LLM always, LLM-judged with a judge)
release    a RAG release in the registry: index + embedding model + prompt + generator settings
"""
