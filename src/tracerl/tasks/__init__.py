"""Built-in tasks, each a module with its data (``make_tasks(split, n)``), its reward and an agent written
with the plain ``openai`` client: :mod:`tracerl.tasks.arithmetic` (the demo's task) and
:mod:`tracerl.tasks.toy` (what the tiny random model learns in CI). ``tracerl train`` names them
``demo-arithmetic:train`` and ``demo-toy:val`` (see :mod:`tracerl.train.data`).
"""
