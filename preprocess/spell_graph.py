"""SPELL-style temporal graphs in plain numpy: per session, nodes sorted by time and cut into blocks.

Inside a block, edge j -> k (edge_index row 0 = source j, row 1 = target k, as models/graph.py reads it) when
    same speaker and 0 < |t_j - t_k| <= time_edge,   or   t_j == t_k (any speaker; j == k gives the self-loop),
with the attribute sign(t_j - t_k) in {-1, 0, 1}. Times are integer milliseconds, so "same instant" is exact.
The relation is symmetric, so every edge appears in both directions with opposite signs. The GNN's three edge
sets are attr >= 0 (messages from later or simultaneous nodes), attr <= 0 (from earlier or simultaneous
ones) and all edges (edge_sets).

`block_edges` finds each node's candidates in its +-time_edge window by binary search over the sorted times
(O(n w) for w nodes per window); `brute_force_edges` checks every pair (O(n^2)) and is the reference the
tests compare against.
"""
import numpy as np


def session_blocks(times_ms, block_size):
    """Node indices of one session sorted by time (stable), cut into consecutive blocks: [(n_b,) int64]."""
    order = np.argsort(np.asarray(times_ms), kind="stable")
    return [order[start:start + block_size] for start in range(0, len(order), block_size)]


def block_edges(times_ms, speakers, *, time_edge_ms):
    """times_ms (n,) int64 sorted ascending, speakers (n,) ints -> (edge_index (2, E) int64, edge_attr (E,) int8),
    edges sorted by (source, target)."""
    times_ms, speakers = np.asarray(times_ms, np.int64), np.asarray(speakers)
    if np.any(np.diff(times_ms) < 0):
        raise ValueError("block_edges needs nodes sorted by time")
    count = len(times_ms)
    low = np.searchsorted(times_ms, times_ms - time_edge_ms, side="left")    # (n,) first candidate of each node
    high = np.searchsorted(times_ms, times_ms + time_edge_ms, side="right")  # (n,) one past the last
    per_node = high - low
    sources = np.repeat(np.arange(count), per_node)                          # (P,) every node j ...
    starts = np.repeat(low - np.concatenate([[0], np.cumsum(per_node)[:-1]]), per_node)
    targets = starts + np.arange(per_node.sum())                             # (P,) ... with each k in its window
    delta = times_ms[sources] - times_ms[targets]
    keep = (delta == 0) | (speakers[sources] == speakers[targets])
    edge_index = np.stack([sources[keep], targets[keep]])
    return edge_index.astype(np.int64), np.sign(delta[keep]).astype(np.int8)


def brute_force_edges(times_ms, speakers, *, time_edge_ms):
    """The same graph by checking every ordered pair: the O(n^2) reference."""
    edges, attributes = [], []
    for j in range(len(times_ms)):
        for k in range(len(times_ms)):
            delta = int(times_ms[j]) - int(times_ms[k])
            if delta == 0 or (speakers[j] == speakers[k] and abs(delta) <= time_edge_ms):
                edges.append((j, k))
                attributes.append((delta > 0) - (delta < 0))
    return np.array(edges, np.int64).reshape(-1, 2).T, np.array(attributes, np.int8)


def edge_sets(edge_index, edge_attr):
    """The three branches' edge lists: (attr >= 0, attr <= 0, all)."""
    return edge_index[:, edge_attr >= 0], edge_index[:, edge_attr <= 0], edge_index


def build_graphs(sessions, times_ms, speakers, *, block_size, time_edge_ms):
    """All blocks of all sessions, packed for one .npz: {"block_session" (B,), "node_ptr" (B+1,), "nodes" (N',)
    global node ids, block by block; "edge_ptr" (B+1,), "edges" (2, E) block-local ids, "edge_attr" (E,)}."""
    sessions, times_ms, speakers = np.asarray(sessions), np.asarray(times_ms, np.int64), np.asarray(speakers)
    block_session, node_parts, edge_parts, attr_parts = [], [], [], []
    for session in np.unique(sessions):
        members = np.flatnonzero(sessions == session)
        for block in session_blocks(times_ms[members], block_size):
            nodes = members[block]  # global ids in time order
            edge_index, edge_attr = block_edges(times_ms[nodes], speakers[nodes], time_edge_ms=time_edge_ms)
            block_session.append(session), node_parts.append(nodes), edge_parts.append(edge_index), attr_parts.append(edge_attr)
    pointer = lambda parts, axis: np.concatenate([[0], np.cumsum([part.shape[axis] for part in parts])]).astype(np.int64)
    return {"block_session": np.array(block_session, np.int64), "node_ptr": pointer(node_parts, 0),
            "nodes": np.concatenate(node_parts).astype(np.int64), "edge_ptr": pointer(edge_parts, 1),
            "edges": np.concatenate(edge_parts, axis=1), "edge_attr": np.concatenate(attr_parts)}
