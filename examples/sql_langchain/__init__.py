"""Text-to-SQL on the Chinook database with a LangChain/LangGraph agent, trained with tracerl (see README.md).

The folder ``examples/`` must be on ``sys.path`` (``train.py``/``evaluate.py`` put it there; the tests do
too), so that runner worker processes can import the agent as ``sql_langchain.agent:sql_agent``.
"""
