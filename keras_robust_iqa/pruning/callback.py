import keras

from keras_robust_iqa.pruning.schedule import ThresholdDecay, schedule_value
from keras_robust_iqa.pruning.surgery import set_masks


class ChannelPruning(keras.callbacks.Callback):
    """Prunes channels during `model.fit` as a tfmot schedule says, by masking them.

    At each step where `schedule` prunes, the scores of all channels are
    recomputed (`criterion`: the mean weights from the current weights, or the
    activation energies on `batches` in the masked model) and the masks of the model from
    `masked_model` are set: a `ThresholdDecay` schedule gives the threshold
    `tau`, any other tfmot schedule (`PolynomialDecay`, `ConstantSparsity`)
    the fraction of each component's channels. Pruned channels stay pruned.
    The step is the optimizer's iteration count, as in tfmot.

    Args:
        graph: the `ChannelGraph` of the unmasked model.
        masks: `{layer name: ChannelMask}` from `masked_model`.
        schedule: a tfmot `PruningSchedule`.
        criterion: `"mean_weight"` or `"activation"` (`ChannelGraph.scores`).
        batches: input batches the activation criterion measures on (a few, kept in memory).

    Attributes:
        pruned: the set of pruned groups (`graph.groups` indices).
    """

    def __init__(self, graph, masks, schedule, criterion="mean_weight", batches=None):
        super().__init__()
        self.graph = graph
        self.masks = masks
        self.schedule = schedule
        self.criterion = criterion
        self.batches = batches
        self.pruned = set()

    def prune_to(self, value):
        """Prune to this fraction (or threshold) now."""
        kind = "tau" if isinstance(self.schedule, ThresholdDecay) else "fraction"
        scores = self.graph.scores(self.criterion, self.batches, model=self.model)
        self.pruned = self.graph.select(scores, already=self.pruned, strict=False, **{kind: value})
        set_masks(self.graph, self.masks, self.pruned)

    def on_train_batch_begin(self, batch, logs=None):
        should_prune, value = schedule_value(self.schedule, int(self.model.optimizer.iterations.numpy()))
        if should_prune:
            self.prune_to(value)

    def final_value(self):
        """The fraction or threshold the schedule ends at."""
        return schedule_value(self.schedule, self.schedule.end_step)[1]
