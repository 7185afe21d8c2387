"""Running a built derivative graph with as little Python as possible.

NOTE [runner]: ``fx.GraphModule.forward`` calls every ATen op through
``OpOverload.__call__``, a Python frame per op (about 0.4 us each on CPU): for a
derivative graph of a few hundred small ops that is most of its time. The runner
is the same straight-line program generated with the C++ callables (``_op``) and
the graph's constants bound as globals: the same ops, so autograd and
``torch.func`` see exactly what the GraphModule would run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx


def python_runner(gm: fx.GraphModule) -> Callable[..., tuple]:
    env: dict[str, Any] = {}
    names: dict[fx.Node, str] = {}

    def const(v: Any) -> str:
        name = f"k{len(env)}"
        env[name] = v
        return name

    def arg(a: Any) -> str:
        if isinstance(a, fx.Node):
            return names[a]
        if isinstance(a, (list, tuple)):
            inner = ", ".join(arg(x) for x in a)
            return f"[{inner}]" if isinstance(a, list) else f"({inner}{',' if len(a) == 1 else ''})"
        if a is None or isinstance(a, (bool, int)) or (isinstance(a, float) and a == a
                                                       and abs(a) != float("inf")):
            return repr(a)
        return const(a)

    params, body = [], []
    for node in gm.graph.nodes:
        name = names[node] = f"v{len(names)}"
        if node.op == "placeholder":
            params.append(name)
        elif node.op == "get_attr":
            body.append(f"    {name} = {const(getattr(gm, node.target))}")
        elif node.op == "call_function":
            target = node.target
            fn = target._op if isinstance(target, torch._ops.OpOverload) else target
            call = ", ".join([arg(a) for a in node.args]
                             + [f"{k}={arg(v)}" for k, v in node.kwargs.items()])
            body.append(f"    {name} = {const(fn)}({call})")
        elif node.op == "output":
            body.append(f"    return {arg(tuple(node.args[0]))}")
        else:  # call_module / call_method: not produced by the builder
            raise RuntimeError(f"derivs internal: unexpected node {node.op} in a derivative graph")
    source = f"def forward({', '.join(params)}):\n" + "\n".join(body or ["    return ()"])
    exec(compile(source, "<derivs runner>", "exec"), env)
    return env["forward"]
