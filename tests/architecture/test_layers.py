"""The shape of the code, checked like behaviour: no module cycles, and the layers contract holds.

``make test`` also runs ``lint-imports`` (the contract in pyproject's ``[tool.importlinter]``) and
``deptry``; these tests keep the same promises inside pytest, so a cycle fails the suite too."""

from __future__ import annotations

import grimp


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_cycle_finder_sees_a_cycle() -> None:
    """The finder itself: a two-module cycle is reported (so an empty answer below means something)."""

    class Graph:
        modules = {"a", "b", "c"}

        def find_modules_directly_imported_by(self, m: str) -> set[str]:
            return {"a": {"b"}, "b": {"a", "c"}, "c": set()}[m]

    assert _cycles(Graph()) == [["a", "b"]]  # type: ignore[arg-type]


def test_no_module_imports_itself_round_a_cycle() -> None:
    graph = grimp.build_graph("psvn", cache_dir=None)
    assert len(graph.modules) > 80  # the whole package was read (the symlinked folders too)
    assert "psvn.gateway.core" in graph.modules and "psvn.policies.engine" in graph.modules
    assert _cycles(graph) == []


def test_gateway_core_is_sans_io() -> None:
    """The gateway's decisions import no network, process or event-loop library, even indirectly."""
    graph = grimp.build_graph("psvn", include_external_packages=True, cache_dir=None)
    for io in ("nats", "aiohttp", "asyncio", "socket", "subprocess"):
        chain = graph.find_shortest_chain(importer="psvn.gateway.core", imported=io)
        assert chain is None, f"psvn.gateway.core reaches {io}: {' -> '.join(chain or ())}"
