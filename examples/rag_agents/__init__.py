"""RAG with the OpenAI Agents SDK: a BM25 research agent trained with tracerl (see README.md)."""
