"""Math word problems solved by an AutoGen assistant with a calculator tool, trained with tracerl.

The folder ``examples/`` must be on ``sys.path`` (``train.py``/``evaluate.py`` put it there; the tests do
too), so that runner worker processes can import the agent as ``math_autogen.agent:math_agent``.
"""
