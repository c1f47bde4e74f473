"""Detection, splitting and fingerprinting on real Dynamo graphs (traced, never compiled: fast)."""

from __future__ import annotations

import torch
from torch import nn

from regionc.blocks.detect import detect_blocks, pretty_path
from regionc.blocks.fingerprint import Fingerprint, describe_value, fingerprint_piece, first_difference, share
from regionc.blocks.rematerialize import rematerialize_tables
from regionc.blocks.split import split_into_pieces
from regionc.compiler.graph import piece_example_inputs
from regionc.models.llama import LlamaConfig, build_demo_model
from tests.models import CheckpointedStack, PerLayerConstant, PerLayerCounters, TinyDiT


def dynamo_graph(model, *args, dynamic=False):
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    with torch.no_grad():
        torch.compile(model, backend=capture, dynamic=dynamic)(*args)
    assert len(graphs) == 1
    return graphs[0]


def split_and_fingerprint(gm):
    split, pieces = split_into_pieces(gm, detect_blocks(gm.graph))
    prints = [fingerprint_piece(split.get_submodule(p.name), piece_example_inputs(split.get_submodule(p.name)))
              for p in pieces]
    return split, pieces, prints


def test_decoder_layers_are_one_region_with_glue_around():
    gm = dynamo_graph(build_demo_model(LlamaConfig.tiny(3)), torch.randint(0, 128, (2, 8)))
    split, pieces, prints = split_and_fingerprint(gm)
    assert [p.label for p in pieces] == ["glue", "layers.0", "layers.1", "layers.2", "glue"]
    assert len({f.digest for f in prints[1:4]}) == 1  # names differ per layer; the fingerprint does not
    assert prints[0].digest != prints[1].digest


def test_two_containers_of_different_blocks_and_canonical_output_order():
    model = TinyDiT(n_double=3, n_single=2)
    gm = dynamo_graph(model, torch.randn(2, 12, 16), torch.randn(2, 5, 32), torch.tensor([1.0, 2.0]))
    split, pieces, prints = split_and_fingerprint(gm)
    by_container = {}
    for piece, fp in zip(pieces, prints):
        if piece.block:
            by_container.setdefault(pretty_path(piece.block.stack), set()).add(fp.digest)
    # The last double block's outputs are consumed by glue in another order than the others';
    # outputs are put in producer order, so all three still share one fingerprint.
    assert {k: len(v) for k, v in by_container.items()} == {"double_blocks": 1, "single_blocks": 1}


def test_heterogeneous_container_is_not_a_region():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    gm = dynamo_graph(Mixed(), torch.randn(2, 8))
    assert detect_blocks(gm.graph) == {}


def test_per_layer_constant_changes_fingerprint_and_is_named():
    gm = dynamo_graph(PerLayerConstant(n_layers=2), torch.randn(3, 32))
    _, pieces, prints = split_and_fingerprint(gm)
    assert prints[0].digest != prints[1].digest
    message = first_difference(prints[0], prints[1])
    assert "0.5" in message and "1.0" in message


def test_fingerprint_covers_input_dtype_shape_and_symbolic_dims():
    model = build_demo_model(LlamaConfig.tiny(2))
    base = split_and_fingerprint(dynamo_graph(model, torch.randint(0, 128, (2, 8))))[2][1]
    longer = split_and_fingerprint(dynamo_graph(model, torch.randint(0, 128, (2, 9))))[2][1]
    dynamic = split_and_fingerprint(dynamo_graph(model, torch.randint(0, 128, (2, 8)), dynamic=True))[2][1]
    double = split_and_fingerprint(dynamo_graph(build_demo_model(LlamaConfig.tiny(2), dtype=torch.float64),
                                                torch.randint(0, 128, (2, 8))))[2][1]
    assert len({base.digest, longer.digest, dynamic.digest, double.digest}) == 4
    assert any("symint(" in item or "s" in item.split("shape=")[-1] for item in dynamic.items if "input" in item)


def test_pieces_that_differ_only_in_symbol_names_share_one_fingerprint():
    """Dynamo names each layer's int its own symbol; the fingerprint names symbols by where they appear.
    Layer 0 reads its int as the position too: it gets a second input for it, and runs its siblings' code."""
    gm = dynamo_graph(PerLayerCounters(n_layers=4), torch.randn(2, 16), [5, 6, 7, 8], dynamic=True)
    split, pieces, prints = split_and_fingerprint(gm)
    assert [p.label for p in pieces] == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert len({f.symbols[-1] for f in prints[1:]}) == 3  # three symbols ...
    assert len({f.digest for f in prints[1:]}) == 1  # ... one fingerprint
    inputs = [len(split.get_submodule(p.name).graph.find_nodes(op="placeholder")) for p in pieces]
    assert len(set(inputs)) == 1
    assert prints[0].digest != prints[1].digest and prints[0].general == prints[1].general
    assert share(prints) == [1, 1, 1, 1]


def test_share_runs_a_piece_on_code_that_assumes_no_more_of_its_sizes():
    apart = Fingerprint("apart", (), (), ("s1", "s2"), (0, 1), "text")
    merged = Fingerprint("merged", (), (), ("s3", "s3"), (0, 0), "text")
    other = Fingerprint("other", (), (), ("s4", "s5"), (0, 1), "another text")
    assert share([merged, apart, other]) == [1, 1, 2]  # code for two sizes serves one size read twice
    assert share([merged, other]) == [0, 1]
    assert share([apart, apart]) == [0, 0]


def test_symbols_with_other_facts_do_not_share():
    """A check on one layer's int gives its symbol a range the others lack: that layer's piece compiles alone."""

    class Checked(PerLayerCounters):
        def forward(self, x, counters):
            torch._check(counters[2] > 4)
            return super().forward(x, counters)

    gm = dynamo_graph(Checked(n_layers=4), torch.randn(2, 16), [5, 6, 7, 8], dynamic=True)
    _, pieces, prints = split_and_fingerprint(gm)
    blocks = {p.label: (i, f) for i, (p, f) in enumerate(zip(pieces, prints)) if p.block is not None}
    assert blocks["layers.1"][1].digest == blocks["layers.3"][1].digest != blocks["layers.2"][1].digest
    owners = share(prints)
    assert owners[blocks["layers.2"][0]] == blocks["layers.2"][0] != owners[blocks["layers.3"][0]]


def test_describe_value_is_metadata_only():
    t = torch.randn(4, 6).t()
    assert describe_value(t) == "tensor(torch.float32, shape=[6,4], stride=[1,6], offset=0, device=cpu, grad=False)"
    assert describe_value(3) == "int(3)"


def test_rope_tables_are_recomputed_in_every_block_and_blocks_stay_identical():
    gm = dynamo_graph(build_demo_model(LlamaConfig.tiny(3)), torch.randint(0, 128, (2, 8)))
    owners = detect_blocks(gm.graph)
    assert rematerialize_tables(gm.graph, owners) == 2  # cos and sin
    split, pieces = split_into_pieces(gm, owners)
    prints = [fingerprint_piece(split.get_submodule(p.name), piece_example_inputs(split.get_submodule(p.name)))
              for p in pieces]
    assert [p.label for p in pieces] == ["glue", "layers.0", "layers.1", "layers.2", "glue"]
    assert len({f.digest for f in prints[1:4]}) == 1
    first_block = split.get_submodule(pieces[1].name)
    assert {"cos", "sin"} <= {n.target for n in first_block.graph.nodes if n.op == "call_method"}
    glue_ops = {getattr(n.target, "__name__", n.target) for n in split.get_submodule(pieces[0].name).graph.nodes}
    assert "embedding" in glue_ops and "cos" not in glue_ops  # the lookup stays glue, the tables moved


def test_glue_over_a_large_float_input_is_not_recomputed():
    class ScaledInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(512, 512) for _ in range(2))

        def forward(self, x):
            x = x * 2.0  # elementwise, but over the (large) activation: the blocks must read it, not redo it
            for block in self.blocks:
                x = block(x)
            return x

    gm = dynamo_graph(ScaledInput(), torch.randn(256, 512))
    assert rematerialize_tables(gm.graph, detect_blocks(gm.graph)) == 0


def _checkpointed_graph(scales):
    """Dynamo's graph of a ``CheckpointedStack`` (grad on: its layers' bodies become subgraphs)."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    torch.manual_seed(0)
    torch.compile(CheckpointedStack(scales=scales), backend=capture)(torch.randn(4, 32, requires_grad=True))
    return graphs[0]


def test_checkpointed_layers_share_a_fingerprint_written_by_their_bodies():
    """HF's gradient checkpointing traces each layer's body as its own subgraph object: the layers still
    share one fingerprint, and a second trace (a new process, for the disk cache) gives the same digest."""
    first = split_and_fingerprint(_checkpointed_graph((1.0, 1.0, 1.0)))
    pieces, prints = first[1], first[2]
    blocks = [fp for piece, fp in zip(pieces, prints) if piece.block]
    assert len(blocks) == 3 and any("constant graph#" in item for item in blocks[0].items)
    assert len({fp.digest for fp in blocks}) == 1
    again = [fp for piece, fp in zip(*split_and_fingerprint(_checkpointed_graph((1.0, 1.0, 1.0)))[1:]) if piece.block]
    assert again[0].digest == blocks[0].digest


def test_a_per_layer_constant_inside_a_checkpointed_body_changes_the_fingerprint():
    _, pieces, prints = split_and_fingerprint(_checkpointed_graph((1.0, 0.5, 1.0)))
    blocks = [fp for piece, fp in zip(pieces, prints) if piece.block]
    assert blocks[0].digest == blocks[2].digest != blocks[1].digest
    assert "constant graph#" in first_difference(blocks[0], blocks[1])
