"""Hand-written LSTM and GRU, written from the gate equations, numerically equal to torch.nn.LSTM / nn.GRU.

    lstm = LSTM(80, 128, num_layers=2, bidirectional=True, dropout=0.1)   # batch_first=True by default
    output, (h_n, c_n) = lstm(x, lengths=lengths)   # x (B, T, 80); output (B, T, 256), zeros past each length
    gru = GRU(80, 128)
    output, h_n = gru(x, lengths=lengths)

Parameter names, shapes and init are those of nn.LSTM / nn.GRU, so `ours.load_state_dict(nn_lstm.state_dict())`
works both ways. `lengths` (B,) replaces pack_padded_sequence: padded steps never touch outputs or final states,
and the reverse direction starts at each sequence's last real step.

Speed (bench/lstm.py): the input projections of all time steps are one matmul per layer, both directions run
in the same per-step batched matmul (against a contiguous copy of the transposed recurrent weights), per-step
views are made before the loop, the candidate gate's weight rows are doubled once per forward so one sigmoid
covers all gates (tanh x = 2 sigmoid 2x - 1), inference (no grad) runs a leaner loop, and each layer is a custom
autograd.Function whose backward is hand-written backpropagation through time: per step only the recurrent
gate gradients, then the input and weight gradients are one matmul each over all steps. Double backward is
not supported. tests/test_lstm.py checks outputs and every gradient against torch.nn.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def _scale_candidate_rows(weight_ih, bias, weight_hh):
    """Copies with the rows of the candidate gate g doubled: then sigmoid of its pre-activation is sigmoid(2x),
    and tanh(x) = 2 sigmoid(2x) - 1, so one sigmoid call covers all four gates (torch.tanh costs about five
    sigmoids on CPU) and no per-step doubling is needed."""
    hidden = weight_hh.shape[2]
    scaled = [tensor.clone() for tensor in (weight_ih, bias, weight_hh)]
    for tensor in scaled:
        tensor[:, 2 * hidden:3 * hidden].mul_(2)
    return scaled


def _lstm_forward(inputs, weight_ih, bias, weight_hh, h0, c0, keep_mask):
    """Runs the LSTM, gate order (i, f, g, o) as in nn.LSTM.

    inputs (D, T, B, I), the reverse direction already reversed in time; weight_ih (D, 4H, I); bias (D, 4H),
    b_ih + b_hh; weight_hh (D, 4H, H); h0, c0 (D, B, H); keep_mask (T, B, 1) bool, True at real steps, or None.
    Returns the activated gates (D, T, B, 4H), hs and cs (D, T, B, H), the states after each step (carried
    unchanged over padded steps), and tanh(c_t) (D, T, B, H) before carrying.
    """
    directions, steps, batch, _ = inputs.shape
    hidden = weight_hh.shape[2]
    weight_ih, bias, weight_hh = _scale_candidate_rows(weight_ih, bias, weight_hh)
    # x W_ih^T + b for all steps in one matmul; each step then adds h W_hh^T in place
    gates_all = torch.baddbmm(bias.unsqueeze(1), inputs.flatten(1, 2), weight_ih.transpose(1, 2))  # (D, T*B, 4H)
    gates_all = gates_all.view(directions, steps, batch, 4 * hidden)
    hs, cs, tanh_cs = (inputs.new_empty(directions, steps, batch, hidden) for _ in range(3))
    # per-step views made once: indexing inside the loop costs more than the small ops themselves
    h_steps, c_steps = [h0, *hs.unbind(1)], [c0, *cs.unbind(1)]  # index t: the state before step t
    gate_steps, tanh_c_steps = gates_all.unbind(1), tanh_cs.unbind(1)  # (D, B, 4H), (D, B, H)
    i_steps, f_steps, g_steps, o_steps = (part.unbind(1) for part in gates_all.split(hidden, dim=-1))
    weight_hh_t = weight_hh.transpose(1, 2).contiguous()  # (D, H, 4H): the per-step GEMM reads a copy faster than a view
    for t in range(steps):
        gates, g, i, f, o = gate_steps[t], g_steps[t], i_steps[t], f_steps[t], o_steps[t]
        h_prev, c_prev, h, c, tanh_c = h_steps[t], c_steps[t], h_steps[t + 1], c_steps[t + 1], tanh_c_steps[t]
        gates.baddbmm_(h_prev, weight_hh_t)
        gates.sigmoid_()
        g.mul_(2).sub_(1)  # tanh of the candidate (its rows were doubled), kept for the backward
        torch.mul(f, c_prev, out=c).addcmul_(i, g)
        torch.add(c, c, out=tanh_c).sigmoid_().mul_(2).sub_(1)  # tanh(c)
        torch.mul(o, tanh_c, out=h)
        if keep_mask is not None:
            torch.where(keep_mask[t], h, h_prev, out=h)
            torch.where(keep_mask[t], c, c_prev, out=c)
    return gates_all, hs, cs, tanh_cs


def _lstm_infer(inputs, weight_ih, bias, weight_hh, h0, c0, keep_mask):
    """_lstm_forward without what only the backward needs (no per-step c or tanh(c) kept) and with fewer
    kernels per step: c = f c' + 2 i s_g - i and h = 2 o s_c - o, s_g, s_c the sigmoids of the doubled
    pre-activations. Returns hs (D, T, B, H) and the final c (D, B, H)."""
    directions, steps, batch, _ = inputs.shape
    hidden = weight_hh.shape[2]
    weight_ih, bias, weight_hh = _scale_candidate_rows(weight_ih, bias, weight_hh)
    gates_all = torch.baddbmm(bias.unsqueeze(1), inputs.flatten(1, 2), weight_ih.transpose(1, 2))  # (D, T*B, 4H)
    gates_all = gates_all.view(directions, steps, batch, 4 * hidden)
    hs = inputs.new_empty(directions, steps, batch, hidden)
    h_steps = [h0, *hs.unbind(1)]
    gate_steps = gates_all.unbind(1)
    i_steps, f_steps, g_steps, o_steps = (part.unbind(1) for part in gates_all.split(hidden, dim=-1))
    c_buffers = [c0.clone(), torch.empty_like(c0)]  # ping-pong: the state before and after a step
    scratch = torch.empty_like(c0)
    weight_hh_t = weight_hh.transpose(1, 2).contiguous()  # (D, H, 4H), as in _lstm_forward
    for t in range(steps):
        gates, g, i, f, o = gate_steps[t], g_steps[t], i_steps[t], f_steps[t], o_steps[t]
        h_prev, h, c_prev, c = h_steps[t], h_steps[t + 1], c_buffers[t % 2], c_buffers[1 - t % 2]
        gates.baddbmm_(h_prev, weight_hh_t)
        gates.sigmoid_()
        torch.mul(f, c_prev, out=c).addcmul_(i, g, value=2).sub_(i)
        torch.add(c, c, out=scratch).sigmoid_()
        torch.mul(o, scratch, out=h).add_(h).sub_(o)
        if keep_mask is not None:
            torch.where(keep_mask[t], h, h_prev, out=h)
            torch.where(keep_mask[t], c, c_prev, out=c)
    return hs, c_buffers[steps % 2]


class _LSTMLayer(torch.autograd.Function):
    """One LSTM layer, all directions, with a hand-written backward through time: per step only the
    recurrent gate gradients; the gradients of inputs and weights are then one matmul each over all steps."""

    @staticmethod
    def forward(ctx, inputs, weight_ih, bias, weight_hh, h0, c0, keep_mask):
        gates_all, hs, cs, tanh_cs = _lstm_forward(inputs, weight_ih, bias, weight_hh, h0, c0, keep_mask)
        ctx.save_for_backward(inputs, weight_ih, weight_hh, h0, c0, gates_all, hs, cs, tanh_cs)
        ctx.keep_mask = keep_mask
        return hs, hs[:, -1].clone(), cs[:, -1].clone()

    @staticmethod
    def backward(ctx, grad_hs, grad_h_n, grad_c_n):
        inputs, weight_ih, weight_hh, h0, c0, gates_all, hs, cs, tanh_cs = ctx.saved_tensors
        keep_mask = ctx.keep_mask
        directions, steps, batch, _ = inputs.shape
        hidden = weight_hh.shape[2]
        ones = hs.new_ones(directions, batch, hidden)
        grad_gates_all = torch.empty_like(gates_all)  # d loss / d pre-activations, (D, T, B, 4H)
        c_steps, tanh_c_steps, grad_h_steps = [c0, *cs.unbind(1)], tanh_cs.unbind(1), grad_hs.unbind(1)
        gate_steps, grad_gate_steps = gates_all.unbind(1), grad_gates_all.unbind(1)
        i_steps, f_steps, g_steps, o_steps = (part.unbind(1) for part in gates_all.split(hidden, dim=-1))
        grad_i_steps, grad_f_steps, grad_g_steps, grad_o_steps = (
            part.unbind(1) for part in grad_gates_all.split(hidden, dim=-1))
        dh = grad_h_n + grad_hs[:, steps - 1]
        dc = grad_c_n.clone()
        for t in range(steps - 1, -1, -1):
            gates, i, f, g, o = gate_steps[t], i_steps[t], f_steps[t], g_steps[t], o_steps[t]
            grad_i, grad_f, grad_g, grad_o = grad_i_steps[t], grad_f_steps[t], grad_g_steps[t], grad_o_steps[t]
            c_prev, tanh_c, grad_gates = c_steps[t], tanh_c_steps[t], grad_gate_steps[t]
            sigmoid_slope = torch.addcmul(gates, gates, gates, value=-1)  # s (1 - s), used for i, f, o
            slope_i, slope_f, _, slope_o = sigmoid_slope.split(hidden, dim=-1)
            # dc_t = dc_{t+1} f_{t+1} (already in dc) + dh_t o_t (1 - tanh(c_t)^2)
            dc_t = torch.addcmul(dc, dh, torch.addcmul(ones, tanh_c, tanh_c, value=-1).mul_(o))
            torch.addcmul(ones, g, g, value=-1, out=grad_g).mul_(i).mul_(dc_t)
            torch.mul(g, slope_i, out=grad_i).mul_(dc_t)
            torch.mul(c_prev, slope_f, out=grad_f).mul_(dc_t)
            torch.mul(tanh_c, slope_o, out=grad_o).mul_(dh)
            dc_prev = dc_t.mul_(f)
            dh_from_output = grad_h_steps[t - 1] if t > 0 else torch.zeros_like(dh)
            if keep_mask is not None:  # a padded step passes dh and dc through and has no gate gradient
                grad_gates.masked_fill_(~keep_mask[t], 0.0)
                dc_prev = torch.where(keep_mask[t], dc_prev, dc)
                dh_from_output = torch.where(keep_mask[t], dh_from_output, dh_from_output + dh)
            dh = torch.baddbmm(dh_from_output, grad_gates, weight_hh)
            dc = dc_prev

        grad_gates_all = grad_gates_all.view(directions, steps * batch, 4 * hidden)
        h_prev_all = torch.cat([h0.unsqueeze(1), hs[:, :-1]], dim=1).flatten(1, 2)  # (D, T*B, H)
        grad_inputs = torch.bmm(grad_gates_all, weight_ih).view(inputs.shape)
        grad_weight_ih = torch.bmm(grad_gates_all.transpose(1, 2), inputs.flatten(1, 2))  # (D, 4H, I)
        grad_weight_hh = torch.bmm(grad_gates_all.transpose(1, 2), h_prev_all)  # (D, 4H, H)
        grad_bias = grad_gates_all.sum(1)  # (D, 4H)
        return grad_inputs, grad_weight_ih, grad_bias, grad_weight_hh, dh, dc, None


def _gru_forward(inputs, weight_ih, bias_ih, weight_hh, bias_hh, h0, keep_mask):
    """Runs the GRU, gate order (r, z, n) as in nn.GRU.

    inputs (D, T, B, I), the reverse direction already reversed in time; weight_ih (D, 3H, I);
    weight_hh (D, 3H, H); biases (D, 3H); h0 (D, B, H); keep_mask (T, B, 1) bool or None. Returns
    sigmoid(r, z) (D, T, B, 2H), n (D, T, B, H), the recurrent projections h_{t-1} W_hh^T + b_hh (D, T, B, 3H)
    and hs (D, T, B, H), the state after each step (carried unchanged over padded steps).
    """
    directions, steps, batch, _ = inputs.shape
    hidden = weight_hh.shape[2]
    input_gates = torch.baddbmm(bias_ih.unsqueeze(1), inputs.flatten(1, 2),
                                weight_ih.transpose(1, 2))  # (D, T*B, 3H), all steps in one matmul
    input_gates = input_gates.view(directions, steps, batch, 3 * hidden)
    reset_update_all = inputs.new_empty(directions, steps, batch, 2 * hidden)
    candidate_all, hs = (inputs.new_empty(directions, steps, batch, hidden) for _ in range(2))
    hidden_gates_all = inputs.new_empty(directions, steps, batch, 3 * hidden)
    h_steps = [h0, *hs.unbind(1)]  # index t: the state before step t
    weight_hh_t = weight_hh.transpose(1, 2).contiguous()  # (D, H, 3H), contiguous as in _lstm_forward
    bias_hh = bias_hh.unsqueeze(1)  # (D, 1, 3H)
    for t in range(steps):
        reset_update, candidate, hidden_gates = reset_update_all[:, t], candidate_all[:, t], hidden_gates_all[:, t]
        h_prev, h = h_steps[t], h_steps[t + 1]
        torch.baddbmm(bias_hh, h_prev, weight_hh_t, out=hidden_gates)
        torch.add(input_gates[:, t, :, :2 * hidden], hidden_gates[..., :2 * hidden], out=reset_update).sigmoid_()
        reset, update = reset_update.split(hidden, dim=-1)
        torch.addcmul(input_gates[:, t, :, 2 * hidden:], reset, hidden_gates[..., 2 * hidden:], out=candidate)
        candidate.mul_(2).sigmoid_().mul_(2).sub_(1)  # tanh, see _lstm_forward
        torch.lerp(candidate, h_prev, update, out=h)  # (1 - z) * n + z * h_prev
        if keep_mask is not None:
            torch.where(keep_mask[t], h, h_prev, out=h)
    return reset_update_all, candidate_all, hidden_gates_all, hs


class _GRULayer(torch.autograd.Function):
    """One GRU layer, all directions, with a hand-written backward through time (as _LSTMLayer)."""

    @staticmethod
    def forward(ctx, inputs, weight_ih, bias_ih, weight_hh, bias_hh, h0, keep_mask):
        reset_update_all, candidate_all, hidden_gates_all, hs = _gru_forward(
            inputs, weight_ih, bias_ih, weight_hh, bias_hh, h0, keep_mask)
        ctx.save_for_backward(inputs, weight_ih, weight_hh, h0, reset_update_all, candidate_all,
                              hidden_gates_all, hs)
        ctx.keep_mask = keep_mask
        return hs, hs[:, -1].clone()

    @staticmethod
    def backward(ctx, grad_hs, grad_h_n):
        inputs, weight_ih, weight_hh, h0, reset_update_all, candidate_all, hidden_gates_all, hs = ctx.saved_tensors
        keep_mask = ctx.keep_mask
        directions, steps, batch, _ = inputs.shape
        hidden = weight_hh.shape[2]
        ones = hs.new_ones(directions, batch, hidden)
        h_steps = [h0, *hs.unbind(1)]
        # d loss / d (h W_hh^T + b_hh) for r, z, n; the input projections get the same for r and z,
        # and for n the gradient before the reset gate multiplies in: grad_candidate_all
        grad_hidden_gates_all = torch.empty_like(hidden_gates_all)  # (D, T, B, 3H)
        grad_candidate_all = torch.empty_like(candidate_all)  # (D, T, B, H)
        dh = grad_h_n + grad_hs[:, steps - 1]
        for t in range(steps - 1, -1, -1):
            reset_update, candidate, h_prev = reset_update_all[:, t], candidate_all[:, t], h_steps[t]
            reset, update = reset_update.split(hidden, dim=-1)
            grad_hidden_gates, grad_candidate = grad_hidden_gates_all[:, t], grad_candidate_all[:, t]
            grad_r, grad_z, grad_hidden_n = grad_hidden_gates.split(hidden, dim=-1)
            sigmoid_slope = torch.addcmul(reset_update, reset_update, reset_update, value=-1)  # (D, B, 2H)
            slope_r, slope_z = sigmoid_slope.split(hidden, dim=-1)
            # h = (1 - z) n + z h_prev
            torch.addcmul(ones, candidate, candidate, value=-1, out=grad_candidate).mul_(
                torch.addcmul(dh, dh, update, value=-1))  # dh (1 - z) (1 - n^2)
            torch.mul(grad_candidate, hidden_gates_all[:, t, :, 2 * hidden:], out=grad_r).mul_(slope_r)
            torch.sub(h_prev, candidate, out=grad_z).mul_(dh).mul_(slope_z)
            torch.mul(grad_candidate, reset, out=grad_hidden_n)
            dh_from_output = grad_hs[:, t - 1] if t > 0 else torch.zeros_like(dh)
            if keep_mask is None:
                dh_from_output = torch.addcmul(dh_from_output, dh, update)
            else:  # a padded step passes dh through and has no gate gradient
                grad_hidden_gates.masked_fill_(~keep_mask[t], 0.0)
                grad_candidate.masked_fill_(~keep_mask[t], 0.0)
                dh_from_output = dh_from_output + torch.where(keep_mask[t], dh * update, dh)
            dh = torch.baddbmm(dh_from_output, grad_hidden_gates, weight_hh)

        grad_input_gates = torch.cat([grad_hidden_gates_all[..., :2 * hidden], grad_candidate_all], dim=-1)
        grad_input_gates = grad_input_gates.view(directions, steps * batch, 3 * hidden)
        grad_hidden_gates_all = grad_hidden_gates_all.view(directions, steps * batch, 3 * hidden)
        h_prev_all = torch.cat([h0.unsqueeze(1), hs[:, :-1]], dim=1).flatten(1, 2)  # (D, T*B, H)
        grad_inputs = torch.bmm(grad_input_gates, weight_ih).view(inputs.shape)
        grad_weight_ih = torch.bmm(grad_input_gates.transpose(1, 2), inputs.flatten(1, 2))  # (D, 3H, I)
        grad_weight_hh = torch.bmm(grad_hidden_gates_all.transpose(1, 2), h_prev_all)  # (D, 3H, H)
        return (grad_inputs, grad_weight_ih, grad_input_gates.sum(1), grad_weight_hh,
                grad_hidden_gates_all.sum(1), dh, None)


class _Recurrent(nn.Module):
    """Parameters, layers, directions, lengths and dropout shared by LSTM and GRU; subclasses run one layer."""

    gates = 0  # gate blocks per weight matrix
    state_tensors = 0  # (h,) or (h, c)

    def __init__(self, input_size, hidden_size, *, num_layers=1, bidirectional=False, dropout=0.0,
                 batch_first=True):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.num_directions = 2 if bidirectional else 1
        self.bidirectional, self.dropout, self.batch_first = bidirectional, dropout, batch_first
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in ["", "_reverse"][:self.num_directions]:
                # Registration order and shapes follow nn.LSTM, so equal seeds give equal initial weights.
                setattr(self, f"weight_ih_l{layer}{suffix}",
                        nn.Parameter(torch.empty(self.gates * hidden_size, layer_input)))
                setattr(self, f"weight_hh_l{layer}{suffix}",
                        nn.Parameter(torch.empty(self.gates * hidden_size, hidden_size)))
                setattr(self, f"bias_ih_l{layer}{suffix}", nn.Parameter(torch.empty(self.gates * hidden_size)))
                setattr(self, f"bias_hh_l{layer}{suffix}", nn.Parameter(torch.empty(self.gates * hidden_size)))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def layer_weights(self, layer):
        """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer, stacked over directions: (D, G*H, ...)."""
        suffixes = ["", "_reverse"][:self.num_directions]
        weights = [[getattr(self, f"{name}_l{layer}{suffix}") for suffix in suffixes]
                   for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return [torch.stack(per_direction) if len(per_direction) > 1 else per_direction[0].unsqueeze(0)
                for per_direction in weights]

    def run_layer(self, inputs, weight_ih, weight_hh, bias_ih, bias_hh, initial_state, keep_mask):
        """inputs (D, T, B, I) -> (hs (D, T, B, H), *final states (D, B, H))."""
        raise NotImplementedError

    def run(self, x, lengths, initial_state):
        """x (B, T, I) if batch_first else (T, B, I); initial_state: tuple of (L*D, B, H) tensors or None."""
        if self.batch_first:
            x = x.transpose(0, 1)  # (T, B, I)
        total_steps, batch, _ = x.shape
        directions, hidden = self.num_directions, self.hidden_size
        if initial_state is None:
            zeros = x.new_zeros(self.num_layers * directions, batch, hidden)
            initial_state = (zeros,) * self.state_tensors
        initial_state = [s.reshape(self.num_layers, directions, batch, hidden) for s in initial_state]

        keep_mask, reverse_index, steps = None, None, total_steps
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=x.device)
            steps = int(lengths.max())  # steps past the longest sequence are all padding: skip them
            if not 0 < steps <= total_steps:
                raise ValueError(f"lengths must lie in 1..{total_steps}, got a maximum of {steps}")
            x = x[:steps]
            if bool((lengths < steps).any()):
                time = torch.arange(steps, device=x.device).unsqueeze(1)  # (T, 1)
                keep_mask = (time < lengths).unsqueeze(-1)  # (T, B, 1)
                x = x.masked_fill(~keep_mask, 0.0)  # whatever the padding holds (even nan) cannot leak
                # position t of a reversed sequence reads step len-1-t; padded steps stay where they are
                reverse_index = torch.where(keep_mask.squeeze(-1), lengths - 1 - time, time)  # (T, B)

        def reverse_time(seq):  # (T, B, K) -> each sequence reversed within its own length
            if reverse_index is None:
                return seq.flip(0)
            return seq.gather(0, reverse_index.unsqueeze(-1).expand_as(seq))

        final_states = []
        for layer in range(self.num_layers):
            inputs = torch.stack([x, reverse_time(x)]) if directions == 2 else x.unsqueeze(0)  # (D, T, B, I)
            hs, *layer_final = self.run_layer(inputs, *self.layer_weights(layer),
                                              [s[layer] for s in initial_state], keep_mask)  # hs (D, T, B, H)
            final_states.append(layer_final)
            x = torch.cat([hs[0], reverse_time(hs[1])], dim=-1) if directions == 2 else hs[0]  # (T, B, D*H)
            if keep_mask is not None:
                x = x.masked_fill(~keep_mask, 0.0)
            if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
                x = F.dropout(x, self.dropout, training=True)

        if steps < total_steps:
            x = F.pad(x, (0, 0, 0, 0, 0, total_steps - steps))
        output = x.transpose(0, 1) if self.batch_first else x
        final_states = [torch.cat(states) for states in zip(*final_states)]  # each (L*D, B, H)
        return output, final_states

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, dropout={self.dropout}, batch_first={self.batch_first}")


class LSTM(_Recurrent):
    """forward(x, lengths=None, state=None) -> (output, (h_n, c_n)), shapes as nn.LSTM."""

    gates = 4
    state_tensors = 2

    def run_layer(self, inputs, weight_ih, weight_hh, bias_ih, bias_hh, initial_state, keep_mask):
        h0, c0 = initial_state
        tensors = (inputs, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0)
        if not (torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)):
            hs, c_n = _lstm_infer(inputs, weight_ih, bias_ih + bias_hh, weight_hh, h0, c0, keep_mask)
            return hs, hs[:, -1].clone(), c_n
        return _LSTMLayer.apply(inputs, weight_ih, bias_ih + bias_hh, weight_hh, h0, c0, keep_mask)

    def forward(self, x, lengths=None, state=None):
        output, (h_n, c_n) = self.run(x, lengths, state)
        return output, (h_n, c_n)


class GRU(_Recurrent):
    """forward(x, lengths=None, state=None) -> (output, h_n), shapes as nn.GRU; state is h0 (L*D, B, H)."""

    gates = 3
    state_tensors = 1

    def run_layer(self, inputs, weight_ih, weight_hh, bias_ih, bias_hh, initial_state, keep_mask):
        return _GRULayer.apply(inputs, weight_ih, bias_ih, weight_hh, bias_hh, initial_state[0], keep_mask)

    def forward(self, x, lengths=None, state=None):
        output, (h_n,) = self.run(x, lengths, None if state is None else (state,))
        return output, h_n
