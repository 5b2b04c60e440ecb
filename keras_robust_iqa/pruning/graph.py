"""Which channels of a Keras model can be removed, and which must go together.

Each layer states how its channels flow (`channel_role()` of the layer contract,
`layers.contract`; Keras's layers through `layers.keras_rules`). Every output channel of a
prunable layer (a *producer*: `Conv2D`, `Dense`, `SeparableConv2D`, `OrthoConv2D`,
`BlockOrthoConv2D`, `OrthoDense`, `RobustBlock`) is an *atom*. Walking the graph, each tensor's
channel axis is a list of atoms, and layers tie atoms that can only be removed
together:
- `GroupSort` / `MaxMin` (alone or inside a `RobustBlock`) ties each group of
  channels it sorts together: a pair loses both members or neither;
- `Add`, `ConvexCombination`, `Multiply`, ... tie channel `c` of every input;
- a residual `RobustBlock` ties its outputs to its inputs (`l x + (1 - l) f(x)`);
- `Concatenate` and `InvertibleDownsampling` rearrange atoms, they do not tie them.
Tied atoms form a *group*, the unit of pruning. Channels the model cannot
lose are frozen: the input's, the output's, and those read by a layer this
module does not know how to slice (`Flatten`, `LayerNormalization`, ...):
unknown layers are left whole rather than guessed at.
"""

import numpy as np
from keras import tree

from keras_robust_iqa.layers import contract
from keras_robust_iqa.layers.keras_rules import contract_of
from keras_robust_iqa.models.graph import tensors_in, walk
from keras_robust_iqa.pruning.criterion import activation_energy, channel_scores, check_criterion, energy_probe


class _SharedLayer(Exception):
    def __init__(self, layer_id):
        super().__init__(layer_id)
        self.layer_id = layer_id


def channel_role(layer):
    """How channels flow through `layer`, as it (or the Keras table) states: a `contract` role or None."""
    stated = contract_of(layer)
    return None if stated is None else stated.channel_role()


def is_residual_block(layer):
    return channel_role(layer) == contract.RESIDUAL


def is_producer(layer):
    return channel_role(layer) == contract.PRODUCER


class ChannelGraph:
    """Atoms, the groups that tie them, and where each layer reads and writes them.

    Attributes:
        producers: `{name: layer}` of the prunable layers, in graph order.
        inputs_of: `{name: [atom per input channel]}` for every layer that
            reads channels it can lose (producers, residual blocks,
            channel-wise layers with weights).
        outputs_of: `{name: [atom per output channel]}`, same layers.
        mixing: names of the layers in `inputs_of` that mix channels (all but
            the channel-wise ones): where a pruned channel must be masked.
        groups: list of groups, each a list of atoms.
        group_of: `{atom: group index}`.
        frozen_groups: indices of groups that must stay.
        owner: `{atom: (producer name, channel)}`.

    A layer called more than once (shared) keeps all its channels, and so do the
    layers whose channels reach it: one set of weights serves every call.

    Raises:
        ValueError: the model has no prunable channel, or two of its layers share a name.
    """

    def __init__(self, model):
        self.model = model
        # Layers called more than once (shared): their channels stay, and they stay whole.
        self.shared = set()
        while True:
            self._reset()
            try:
                _, outputs = walk(model, self._visit)
                break
            except _SharedLayer as found:  # learnt only at its second call: walk again
                self.shared.add(found.layer_id)
        for t in tree.flatten(outputs):
            self._frozen_atoms.update(self._atoms[id(t)])
        self._collect_groups()
        if not self.producers:
            raise ValueError(
                f"Model '{model.name}' has no prunable layer (Conv2D, Dense, SeparableConv2D, OrthoConv2D, "
                "BlockOrthoConv2D, OrthoDense or RobustBlock)."
            )
        if len(self.frozen_groups) == len(self.groups):
            raise ValueError(
                f"Model '{model.name}' has no prunable channel: every output channel of its "
                f"prunable layers {list(self.producers)} is needed as it is (the model's output, "
                "or read by a layer that cannot be sliced)."
            )
        del self._atoms, self._seen, self._names
        self._probes = {}  # id(model) -> its energy probe, built once

    def _reset(self):
        self._parent = []
        self.owner = {}
        self._frozen_atoms = set()
        self._atoms = {}
        self.producers = {}
        self.inputs_of = {}
        self.outputs_of = {}
        self.mixing = []
        self.gains = []  # (a channel-wise scaling layer, the atoms it reads, position by position)
        self.same_channel = {}  # atom -> every atom merged into the same channel
        self._seen = set()
        self._names = {}

    # Union-find over atoms -----------------------------------------------------

    def _new_atoms(self, count, owner=None, frozen=False):
        start = len(self._parent)
        atoms = list(range(start, start + count))
        self._parent.extend(atoms)
        for i, atom in enumerate(atoms):
            if owner is not None:
                self.owner[atom] = (owner, i)
            if frozen:
                self._frozen_atoms.add(atom)
        return atoms

    def _find(self, atom):
        while self._parent[atom] != atom:
            self._parent[atom] = self._parent[self._parent[atom]]
            atom = self._parent[atom]
        return atom

    def _tie(self, atoms):
        roots = [self._find(a) for a in atoms]
        for r in roots[1:]:
            self._parent[r] = roots[0]

    def _tie_groups(self, atoms, size):
        for i in range(0, len(atoms), size):
            self._tie(atoms[i : i + size])

    # Walking the graph ---------------------------------------------------------

    def _visit(self, layer, args, kwargs):
        if id(layer) in self._seen and id(layer) not in self.shared:
            raise _SharedLayer(id(layer))
        self._seen.add(id(layer))
        if self._names.setdefault(layer.name, id(layer)) != id(layer):
            raise ValueError(
                f"Two layers of model '{self.model.name}' are both named '{layer.name}' (in different "
                "nested models); pruning finds layers by name: give them distinct names."
            )
        kwargs.pop("mask", None)  # no layer here uses Keras masking
        outputs = layer(*args, **kwargs)
        ins = [self._atoms_of(t) for t in tensors_in(args)]
        outs = tree.flatten(outputs)
        channels = [t.shape[-1] if len(t.shape) >= 2 else None for t in outs]
        if id(layer) in self.shared:
            result = self._block(ins, channels)
        else:
            result = self._channels_out(layer, ins, channels)
        for t, atoms in zip(outs, result):
            self._atoms[id(t)] = atoms
        return outputs

    def _atoms_of(self, tensor):
        if id(tensor) not in self._atoms:  # a model input: its channels stay
            self._atoms[id(tensor)] = self._new_atoms(tensor.shape[-1], frozen=True)
        return self._atoms[id(tensor)]

    def _channels_out(self, layer, ins, channels):
        """Atoms of each output of `layer`, given the atoms of its inputs."""
        if any(a is None for a in ins) or len(channels) != 1:
            return self._block(ins, channels)
        stated = contract_of(layer)
        role = None if stated is None else stated.channel_role()
        x = ins[0]
        if len(ins) == 1 and role == contract.PRODUCER:
            self.producers[layer.name] = layer
            self.mixing.append(layer.name)
            self.inputs_of[layer.name] = x
            out = self._new_atoms(channels[0], owner=layer.name)
            self._tie_groups(out, stated.tied_channels())
            self.outputs_of[layer.name] = out
            return [out]
        if len(ins) == 1 and role == contract.RESIDUAL:
            self.mixing.append(layer.name)
            self.inputs_of[layer.name] = self.outputs_of[layer.name] = x
            self._tie_groups(x, stated.tied_channels())
            return [x]
        if len(ins) == 1 and role == contract.CHANNELWISE:
            self.inputs_of[layer.name] = self.outputs_of[layer.name] = x
            if stated.channel_scale() is not None:
                self.gains.append((stated, x))
            return [x]
        if len(ins) == 1 and role == contract.PASS:
            self._tie_groups(x, stated.tied_channels())
            return [x]
        if role == contract.MERGE and len({len(a) for a in ins}) == 1 and len(ins) > 1:
            for atoms in zip(*ins):
                self._tie(atoms)
                merged = set().union(*(self.same_channel.get(a, {a}) for a in atoms))
                for a in merged:
                    self.same_channel[a] = merged
            return [x]
        if role == contract.CONCAT:
            return [[a for atoms in ins for a in atoms]]
        if role == contract.SPACE_TO_DEPTH and len(ins) == 1:
            # space_to_depth: output channel (dy * s + dx) * C + c holds input channel c.
            return [x * (layer.pool_size * layer.pool_size)]
        return self._block(ins, channels)

    def _block(self, ins, channels):
        """A layer that cannot be sliced: its inputs stay, its outputs are new and fixed."""
        for atoms in ins:
            self._frozen_atoms.update(atoms or ())
        return [self._new_atoms(c, frozen=True) if c is not None else None for c in channels]

    def _collect_groups(self):
        by_root = {}
        for atom in self.owner:
            by_root.setdefault(self._find(atom), []).append(atom)
        frozen_roots = {self._find(a) for a in self._frozen_atoms}
        self.groups = list(by_root.values())
        self.group_of = {a: g for g, atoms in enumerate(self.groups) for a in atoms}
        self.frozen_groups = {g for g, root in enumerate(by_root) if root in frozen_roots}

    # Queries -------------------------------------------------------------------

    @property
    def prunable_channels(self):
        """Number of output channels of prunable layers that could be removed."""
        return sum(len(atoms) for g, atoms in enumerate(self.groups) if g not in self.frozen_groups)

    def kept_positions(self, atoms, pruned_groups):
        """Indices of the channels in `atoms` whose group is not pruned."""
        pruned_groups = set(pruned_groups)
        return [i for i, a in enumerate(atoms) if self.group_of.get(a) not in pruned_groups]

    def scores(self, criterion="mean_weight", batches=None, model=None):
        """`{producer name: score per output channel}`: the channels with small scores go first.

        Args:
            criterion: `"mean_weight"`, `mean(|w_i|)` from the current weights; or
                `"activation"`, each channel's mean squared output on `batches`.
            batches: input batches (or `(inputs, targets)` tuples), for `"activation"`.
            model: the model the activations are measured in (default: the graph's own);
                a masked model that shares its layers (`masked_model`) measures the
                channels as the masks leave them.

        A `ChannelGain` that a channel passes through multiplies its score by `|d|`
        (the mean over the positions where the channel reaches the gain), its energy by
        `d^2`: the linear map that produces the channel is the layer's followed by the
        gain, and a gain near 0 silences the channel whatever the layer's weights.
        """
        criterion = check_criterion(criterion)
        if criterion == "activation":
            if batches is None:
                raise ValueError("The activation criterion needs `batches` of inputs to measure on.")
            model = self.model if model is None else model
            if id(model) not in self._probes:
                self._probes[id(model)] = energy_probe(model, list(self.producers))
            scores = activation_energy(self._probes[id(model)], batches)
            power = 2
        else:
            scores = {name: channel_scores(layer) for name, layer in self.producers.items()}
            power = 1
        for gain, atoms in self.gains:
            magnitudes = gain.channel_scale() ** power
            reached = {}
            for atom, magnitude in zip(atoms, magnitudes):
                for a in self.same_channel.get(atom, (atom,)):
                    reached.setdefault(a, []).append(magnitude)
            for atom, found in reached.items():
                if atom in self.owner:
                    name, i = self.owner[atom]
                    scores[name][i] *= np.mean(found)
        return scores

    def group_scores(self, scores):
        """Mean score of each group's channels."""
        return [
            sum(scores[self.owner[a][0]][self.owner[a][1]] for a in atoms) / len(atoms)
            for atoms in self.groups
        ]

    def components(self):
        """Prunable groups, partitioned into sets whose layers are tied together.

        A `--fraction` is taken of each component: groups are only ranked
        against groups of the same layers, whose weights are on one scale.
        """
        parent = {name: name for name in self.producers}

        def find(name):
            while parent[name] != name:
                name = parent[name]
            return name

        for atoms in self.groups:
            layers = [find(self.owner[a][0]) for a in atoms]
            for name in layers[1:]:
                parent[name] = layers[0]
        result = {}
        for g, atoms in enumerate(self.groups):
            if g not in self.frozen_groups:
                result.setdefault(find(self.owner[atoms[0]][0]), []).append(g)
        return list(result.values())

    def select(self, scores, *, fraction=None, tau=None, already=(), strict=True):
        """The groups to prune, as a set of group indices.

        Args:
            scores: from `scores()`.
            fraction: prune this fraction of the groups of each component, the
                ones with the smallest score first.
            tau: prune every group whose score is below `tau`.
            already: groups pruned before; they stay pruned.
            strict: with `tau`, raise when a layer would lose every channel;
                otherwise keep its best group.

        Every producer keeps at least one output channel.
        """
        if (fraction is None) == (tau is None):
            raise ValueError("Give exactly one of `fraction` and `tau`.")
        group_score = self.group_scores(scores)
        pruned = set(already)
        remaining = self._remaining(pruned)
        if tau is not None:
            wanted = [g for g in range(len(self.groups)) if g not in self.frozen_groups and group_score[g] < tau]
            if strict:
                self._check_tau(tau, wanted, scores)
        else:
            wanted = []
            for component in self.components():
                ranked = sorted(component, key=lambda g: (g not in pruned, group_score[g]))
                wanted += ranked[: max(round(fraction * len(component)), len(pruned & set(component)))]
        for g in sorted(wanted, key=lambda g: group_score[g]):
            if g in pruned:
                continue
            losses = self._channels_per_layer([g])
            if all(remaining[name] > n for name, n in losses.items()):
                pruned.add(g)
                for name, n in losses.items():
                    remaining[name] -= n
        return pruned

    def _channels_per_layer(self, groups):
        """`{producer: number of its output channels in these groups}`."""
        counts = {}
        for g in groups:
            for a in self.groups[g]:
                name = self.owner[a][0]
                counts[name] = counts.get(name, 0) + 1
        return counts

    def _remaining(self, pruned):
        """`{producer: output channels left}` with `pruned` groups removed."""
        lost = self._channels_per_layer(pruned)
        return {name: len(self.outputs_of[name]) - lost.get(name, 0) for name in self.producers}

    def _check_tau(self, tau, wanted, scores):
        for name, left in self._remaining(wanted).items():
            if left <= 0:
                s = scores[name]
                raise ValueError(
                    f"tau={tau:g} would remove all {len(s)} output channels of layer "
                    f"'{name}' (their scores are {s.min():.3g} to {s.max():.3g}); "
                    "at least one channel must stay: give a smaller tau."
                )
