"""A trained Keras model as an ONNX graph (token ids [docs, length] int32 -> probabilities), the
form in which classifier.py runs it: on onnxruntime, without importing TensorFlow.

The converter (tf2onnx) orders some nodes, names the constants it folds and the unknown dimensions,
and places a loop body's copies differently from one call to the next. The graph is therefore put
in a canonical form, its nodes sorted by their structure and every internal name given by first
use, so the same weights give the same bytes and DVC sees an identical retrain as unchanged
(tests/test_models.py exports the same model four times).
"""
from __future__ import annotations

import hashlib
import logging

OPSET = 17
INPUT = "ids"


def export_onnx(model) -> bytes:
    import tensorflow as tf
    import tf2onnx

    # the converter's progress, and TensorFlow's warnings while it exports the graph (collections
    # it cannot serialize, which the converter does not use)
    for name in ("tf2onnx", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)

    @tf.autograph.experimental.do_not_convert
    def forward(ids):
        return model(ids, training=False)

    signature = (tf.TensorSpec([None, None], tf.int32, name=INPUT),)
    proto, _ = tf2onnx.convert.from_function(tf.function(forward), input_signature=signature, opset=OPSET)
    proto = without_mask_products(proto)
    sort_nodes(proto.graph, {v.name: f"input:{v.name}" for v in proto.graph.input})
    rename(proto.graph)
    return proto.SerializeToString()


def without_mask_products(proto):
    """`proto` with its masked sums of embedded tokens made plain sums where that gives the same
    output: in a masked mean, every embedded token is multiplied by its position's mask (0 for
    padding, id 0) before the sum, half of cbow's time on onnxruntime. With the table's row 0 made
    zeros, padding already adds nothing. The rewritten graph is kept only if it gives exactly the
    original's outputs on ids with padding at the end, in the middle and in whole rows."""
    import onnx
    from onnx import numpy_helper

    candidate = onnx.ModelProto()
    candidate.CopyFrom(proto)
    graph = candidate.graph
    producer = {out: node for node in graph.node for out in node.output}
    tables = {t.name: t for t in graph.initializer}
    outputs = {value.name for value in graph.output}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    rewritten = []
    for node in list(graph.node):
        gathers = [producer.get(name) for name in node.input] if node.op_type == "Mul" else []
        gather = next((g for g in gathers if g is not None and g.op_type == "Gather" and g.input[0] in tables
                       and readers[g.input[0]] == 1 and readers[g.output[0]] == 1
                       and all(a.i == 0 for a in g.attribute if a.name == "axis")), None)
        if gather is None or len(tables[gather.input[0]].dims) != 2 or {node.output[0], gather.output[0]} & outputs:
            continue
        table = tables[gather.input[0]]
        rows = numpy_helper.to_array(table).copy()
        rows[0] = 0
        table.CopyFrom(numpy_helper.from_array(rows, table.name))
        for other in graph.node:
            other.input[:] = [gather.output[0] if name == node.output[0] else name for name in other.input]
        graph.node.remove(node)
        rewritten.append(rows.shape[0])
    if not rewritten or not same_outputs(proto, candidate, min(rewritten)):
        return proto
    return candidate


def same_outputs(a, b, vocabulary: int) -> bool:
    """Whether models `a` and `b` give the same outputs, bit for bit, on token ids below `vocabulary`."""
    import numpy as np
    import onnxruntime

    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocabulary, size=(8, 64), dtype=np.int32)
    for row, length in enumerate([0, 1, 2, 7, 30, 63, 64]):
        ids[row, length:] = 0
    ids[7, rng.random(64) < 0.3] = 0
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    outputs = [onnxruntime.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
               .run(None, {INPUT: ids}) for m in (a, b)]
    return all(np.array_equal(x, y) for x, y in zip(*outputs))


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()


def sort_nodes(graph, outer: dict[str, str]) -> str:
    """Sort `graph`'s nodes (and its subgraphs', recursively) into a topological order that depends
    on structure only: by depth, then by a hash of each node's operator, attributes and inputs'
    own hashes. `outer` gives the hashes of the enclosing graphs' values. Returns the graph's hash."""
    copies_to_later_outputs(graph)
    keys = dict(outer)
    for i, value in enumerate(graph.input):
        keys[value.name] = outer.get(value.name, f"input{i}")
    for tensor in graph.initializer:
        unnamed = type(tensor)()
        unnamed.CopyFrom(tensor)
        unnamed.name = ""
        keys[tensor.name] = digest("tensor", unnamed.SerializeToString(deterministic=True))
    producer = {out: node for node in graph.node for out in node.output if out}
    node_key, depth = {}, {}

    def value_key(name: str) -> tuple[str, int]:
        if name in keys or not name:
            return keys.get(name, ""), 0
        node = producer[name]
        node_hash(node)
        return f"{node_key[id(node)]}:{list(node.output).index(name)}", depth[id(node)]

    def node_hash(node) -> None:
        if id(node) in node_key:
            return
        inputs = [value_key(name) for name in node.input]
        parts = [node.domain, node.op_type, *(k for k, _ in inputs)]
        for attr in sorted(node.attribute, key=lambda a: a.name):
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            if not subgraphs:
                parts.append(attr.SerializeToString(deterministic=True).hex())
                continue
            parts.append(attr.name)
            for sub in subgraphs:
                # what the subgraph reads of this graph's values must come before the node too
                read = {n: value_key(n) for n in sorted(used_names(sub) & producer.keys())}
                inputs += read.values()
                parts.append(sort_nodes(sub, {**keys, **{n: k for n, (k, _) in read.items()}}))
        node_key[id(node)] = digest(*parts)
        depth[id(node)] = 1 + max((d for _, d in inputs), default=0)

    for node in graph.node:
        node_hash(node)
    ordered = sorted(graph.node, key=lambda n: (depth[id(n)], node_key[id(n)]))
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    return digest("graph", *(node_key[id(n)] for n in ordered), *(value_key(v.name)[0] for v in graph.output))


def copies_to_later_outputs(graph) -> None:
    """Where an Identity node copies one graph output to another (a loop body giving the same value
    as a state and as a step's output), the converter makes either the copy; here the value is
    produced as the output listed first, and the copy is the later one."""
    slot = {value.name: i for i, value in enumerate(graph.output)}
    for node in graph.node:
        source, copy = (node.input[0], node.output[0]) if node.op_type == "Identity" else ("", "")
        if source in slot and copy in slot and slot[copy] < slot[source]:
            swap = {source: copy, copy: source}
            for each in all_nodes(graph):
                each.input[:] = [swap.get(n, n) for n in each.input]
                each.output[:] = [swap.get(n, n) for n in each.output]


def all_nodes(graph):
    """The graph's nodes and its subgraphs', recursively."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from all_nodes(sub)


def used_names(graph) -> set[str]:
    """Every value name the graph's nodes read, its subgraphs' included."""
    return {name for node in all_nodes(graph) for name in node.input}


def rename(graph) -> None:
    """Name the graph's tensors and nodes in order of first use; its inputs and outputs keep theirs."""
    keep = {v.name for v in (*graph.input, *graph.output)}
    names: dict[str, str] = {}
    dims: dict[str, str] = {}  # the converter's names of unknown dimensions count up over a process

    def typed(value) -> None:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = dims.setdefault(dim.dim_param, f"d{len(dims)}")

    def new(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    def visit(g, name: str) -> None:
        g.name = name
        g.ClearField("doc_string")  # names the traced function, numbered over the process
        for value in (*g.input, *g.output):
            value.name = new(value.name)
            typed(value)
        for i, node in enumerate(g.node):
            node.name = f"{name}_{i}"
            if not node.domain:  # set empty on some nodes, unset on others
                node.ClearField("domain")
            node.input[:] = [new(n) for n in node.input]
            for attr in node.attribute:
                for j, sub in enumerate(([attr.g] if attr.HasField("g") else []) + list(attr.graphs)):
                    visit(sub, f"{node.name}_{attr.name}{j}")
            node.output[:] = [new(n) for n in node.output]
        for value in g.value_info:
            value.name = new(value.name)
            typed(value)
        for tensor in g.initializer:
            tensor.name = new(tensor.name)
        g.initializer.sort(key=lambda t: int(t.name[1:]) if t.name[1:].isdigit() else -1)

    visit(graph, graph.name)
