"""Recurrent layers: nn.LSTM, nn.GRU and nn.RNN as one op each, with torch's flat weights."""

from __future__ import annotations

from typing import Any

from kernelgym.ops.registry import register
from kernelgym.ops.spec import REAL, OpSpec, Param, Weight, pad_ones, same_shape

# ---- recurrent layers ----------------------------------------------------------------------------
# nn.LSTM / nn.GRU / nn.RNN as one op each over (x, h0[, c0]) with torch's weights
# (``weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}...``, ``bias_ih_l{k}...``, ``bias_hh_l{k}...``).
# A catalog op has one tensor result, so the tuple a layer returns is modelled by the `result`
# parameter: "output" (the last layer's h at every step: (T, B, D*H), (B, T, D*H) batch-first),
# "h_n" (the last step's h of every layer and direction: (L*D, B, H)) or, for the LSTM, "c_n"
# (the last cell states). A traced ``out, (h, c) = self.lstm(x, (h0, c0))`` whose out and h are
# both used becomes two nodes of the same inputs and weights. The gates (PyTorch's documented
# equations; gate rows in torch's order): LSTM i, f, g, o with c' = f c + i g, h' = o tanh(c');
# GRU r, z, n with n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h;
# RNN h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu. Eval mode: dropout never applies.
RECURRENT_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def recurrent_weight_names(layers: int, bidirectional: bool, bias: bool) -> list[str]:
    """torch's flat parameter names of a recurrent layer, in its order (layer, direction, ih/hh)."""
    out = []
    for k in range(layers):
        for sfx in ("", "_reverse") if bidirectional else ("",):
            out += [f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}"]
            out += [f"bias_ih_l{k}{sfx}", f"bias_hh_l{k}{sfx}"] if bias else []
    return out


def _recurrent_weights(op: str):
    def weights(ins, out, p):
        gates, hidden = RECURRENT_GATES[op], ins[1][-1]
        d = 2 if p["bidirectional"] else 1
        ws = []
        for name in recurrent_weight_names(p["layers"], p["bidirectional"], p["bias"]):
            k = int(name.split("_l", 1)[1].split("_", 1)[0])
            if name.startswith("weight_ih"):
                ws.append(Weight(name, (gates * hidden, ins[0][-1] if k == 0 else d * hidden), "randn_scaled"))
            elif name.startswith("weight_hh"):
                ws.append(Weight(name, (gates * hidden, hidden), "randn_scaled"))
            else:
                ws.append(Weight(name, (gates * hidden,), "randn_scaled"))
        return ws

    return weights


def _recurrent_shape(a, o, p, c):
    # x (T, B, I) or (B, T, I); h0 [c0] (L*D, B, H)
    x, h = a[0], a[1]
    d = 2 if p["bidirectional"] else 1
    batch = x.dims[2] if p["batch_first"] else x.dims[1]
    cs = [x.rank == 3, h.rank == 3, h.dims[2] == p["layers"] * d, h.dims[1] == batch,
          *pad_ones(x, 3), *pad_ones(h, 3),
          # the weights (gates * H by I, H or D*H) within the size budget
          h.logs[0] + x.logs[0] + 2 <= c.max_log, 2 * h.logs[0] + 3 <= c.max_log]
    for t in a[2:]:
        cs += same_shape(h, t)
    if p["result"] == "output":
        cs += [o.rank == 3, o.dims[0] == d * h.dims[0], o.dims[1] == x.dims[1], o.dims[2] == x.dims[2], *pad_ones(o, 3)]
    else:
        cs += same_shape(h, o)
    return cs


def _recurrent_flops(op: str):
    def flops(ins, out, p):
        x, h = ins[0], ins[1]
        steps_batch, hidden, d = x[0] * x[1], h[-1], 2 if p["bidirectional"] else 1
        gates = RECURRENT_GATES[op]
        total = 0
        for k in range(p["layers"]):
            fan_in = (x[-1] if k == 0 else d * hidden) + hidden
            total += d * steps_batch * gates * hidden * (2 * fan_in + 8)
        return total

    return flops


def _recurrent_call(op: str):
    fn = {"lstm": "torch.lstm", "gru": "torch.gru"}

    def call(a, p):
        names = recurrent_weight_names(p["layers"], p["bidirectional"], p["bias"])
        ws = ", ".join(p["_w"][n] for n in names)
        hx = f"({a[1]}, {a[2]})" if op == "lstm" else a[1]
        f = fn.get(op) or f"torch.rnn_{p['nonlinearity']}"
        idx = ("output", "h_n", "c_n").index(p["result"])
        return (f"{f}({a[0]}, {hx}, [{ws}], {p['bias']}, {p['layers']}, 0.0, False, {p['bidirectional']}, "
                f"{p['batch_first']})[{idx}]")

    return call


def _recurrent(op: str, doc: str, combos: tuple[tuple[Any, ...], ...], extra: tuple[Param, ...] = ()) -> None:
    results = ("output", "h_n", "c_n") if op == "lstm" else ("output", "h_n")
    register(OpSpec(
        name=op, category="matmul", arity=3 if op == "lstm" else 2, call=_recurrent_call(op),
        shape=_recurrent_shape, flops=_recurrent_flops(op),
        params=(Param("layers", (1, 2)), Param("bidirectional", (False, True)), Param("batch_first", (False, True)),
                Param("bias", (True, False)), Param("result", results), *extra),
        combos=combos, dtypes=("float32",), weights=_recurrent_weights(op), min_rank=3, out_range=REAL, doc=doc,
        # T * B * (gates * H) * (I + H) per layer and direction: a budget, not a count
        log_flops=lambda a, o, p, c: a[0].logs[1] + a[0].logs[2] + 2 * a[1].logs[0] + a[1].logs[2] + 4,
    ))


_recurrent("lstm", "nn.LSTM(x, (h0, c0)): output, h_n or c_n (the `result` parameter)", (
    (1, False, False, True, "output"), (2, False, True, True, "output"), (1, True, False, True, "output"),
    (2, True, True, False, "h_n"), (2, False, False, True, "c_n"), (1, True, True, True, "c_n")))
_recurrent("gru", "nn.GRU(x, h0): output or h_n (the `result` parameter)", (
    (1, False, False, True, "output"), (2, False, True, True, "output"), (1, True, False, False, "output"),
    (2, True, True, True, "h_n"), (2, False, False, True, "h_n")))
_recurrent("rnn", "nn.RNN(x, h0) with tanh or relu: output or h_n (the `result` parameter)", (
    (1, False, False, True, "output", "tanh"), (2, True, True, True, "output", "tanh"),
    (2, False, False, False, "h_n", "relu"), (1, True, False, True, "output", "relu")),
    (Param("nonlinearity", ("tanh", "relu")),))
