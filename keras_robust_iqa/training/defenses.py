"""Data-driven defenses, the baselines that RobustBlocks are compared with.

Both are learned from data, change only how a model is trained, and give no guarantee:

- `NormRegularizedTraining` (NT; Liu et al., "Defense Against Adversarial Attacks on
  No-Reference Image Quality Models with Gradient Norm Regularization", CVPR 2024):
  an L-inf attack of budget `eps` moves a score by about `eps * ||grad_x f||_1`, so the
  training loss gets a finite-difference estimate of that gradient norm, squared.
- `AdversarialTraining` (Chistyakova et al., "Increasing the Robustness of Image Quality
  Assessment Models Through Adversarial Training", Technologies 2024): every batch is
  trained together with its FGSM-attacked copy, whose labels are lowered by how much the
  attack degraded the image (`1 - SSIM`).

Each is a `keras.Model` that wraps the IQA model and overrides `train_step` only (TF
backend), so `compile`, `fit`, metrics, callbacks and distribution strategies work as for
any model. Inference and evaluation are the wrapped model's own. The wrapped model is
`.inner`; that is the model to save and deploy (`InnerModelCheckpoint` saves it), so a
defended run folder holds a plain IQA model.
"""

import copy

import keras
import tensorflow as tf

DEFENSES = ("nt", "adversarial")


class _DefendedModel(keras.Model):
    """A model that predicts with `inner` and trains on `defended_loss`."""

    def __init__(self, inner, **kwargs):
        if not isinstance(inner, keras.Model):
            raise ValueError(f"inner must be a keras.Model, got {type(inner).__name__}.")
        kwargs.setdefault("name", inner.name)  # run folders record the model's own name
        super().__init__(**kwargs)
        self.inner = inner
        # Built with its model: BackupAndRestore and ModelCheckpoint need built models.
        self.built = inner.built

    def build(self, input_shape):
        if not self.inner.built:
            self.inner.build(input_shape)

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def defended_loss(self, x, y, sample_weight):
        """(predictions on the clean `x`, total training loss). Runs under the weights' tape."""
        raise NotImplementedError

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred, loss = self.defended_loss(x, y, sample_weight)
            scaled = self.optimizer.scale_loss(loss)  # loss scaling under mixed precision
        gradients = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        for metric in self.metrics:
            if metric.name == "loss":
                # The compiled loss is divided by the replicas (gradients are summed across
                # them); the logged loss is the per-batch value, as in Keras' own train_step.
                metric.update_state(loss * _replicas(), sample_weight=tf.shape(x)[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def score_gradient(self, x, training=True):
        """(scores f(x), d sum(f) / dx): for independent samples, each sample's input gradient."""
        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            scores = self(x, training=training)
        return scores, tape.gradient(scores, x)

    def get_config(self):
        return {**super().get_config(), "inner": keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # deserialization consumes the nested config
        inner = keras.saving.deserialize_keras_object(config.pop("inner"))
        return cls(inner, **config)


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class NormRegularizedTraining(_DefendedModel):
    """NT: the compiled loss plus a finite-difference gradient-norm penalty.

    `loss = compiled_loss(y, f(x)) + lam * 0.5 * mean(((f(x + h d) - f(x)) / h) ** 2)` with
    `d = sign(grad_x f(x))` held constant (Liu et al., CVPR 2024). For small `h`,
    `(f(x + h d) - f(x)) / h` is the directional derivative along `d`, which equals
    `||grad_x f(x)||_1`: the first-order score change under an L-inf attack of unit budget.
    The finite difference costs one more forward pass instead of double backpropagation.
    Liu et al. pair it with an L1 fidelity loss (`compile(loss="mae")`, `--loss l1`).

    `x + h d` is not clipped to [0, 1]: it is a point of a derivative estimate, not an image.
    All passes run in training mode, as in the reference (PyTorch `model.train()`), so
    BatchNorm statistics also see the `h`-shifted batch.

    With a scale-free loss (PLCC, rank: the score's scale is left free) the penalty above
    is ill-posed: shrinking every score by `c` leaves the loss as it is and the penalty
    times `c^2`, so training can zero it without making the model any harder to inflate
    relative to its own spread (calibration onto the MOS scale scales it back). Given
    `relative_eps`, the penalty is on `relative_eps * slope / std(f(x))` instead: the
    first-order gain of an L-inf attack of that budget in units of the batch's score
    spread, the quantity the MSU benchmark's MinMax-scaled gain measures. It is unchanged
    when the scores are scaled.

    Args:
        inner: the IQA model, one score per image.
        nt_lambda: weight of the penalty (`lambda`; 1e-3 in the paper).
        h: finite-difference step in [0, 1] pixel units (0.01 in the paper).
        relative_eps: None (the paper's penalty) or an L-inf budget in [0, 1] pixel units:
            penalise the gain at that budget relative to the batch's score spread.
    """

    def __init__(self, inner, nt_lambda=1e-3, h=0.01, relative_eps=None, **kwargs):
        if not nt_lambda >= 0 or nt_lambda == float("inf"):
            raise ValueError(f"nt_lambda must be a finite number >= 0, got {nt_lambda!r}.")
        if not 0 < h < float("inf"):
            raise ValueError(f"h must be a positive finite step, got {h!r}.")
        if relative_eps is not None and not 0 < relative_eps <= 1:
            raise ValueError(f"relative_eps must be None or in (0, 1] (images are in [0, 1]), got {relative_eps!r}.")
        super().__init__(inner, **kwargs)
        self.nt_lambda = float(nt_lambda)
        self.h = float(h)
        self.relative_eps = None if relative_eps is None else float(relative_eps)

    def gradient_penalty(self, x, training=True):
        """(f(x), the penalty `lam * 0.5 * mean(((f(x + h d) - f(x)) / h) ** 2)`, or with
        `relative_eps` the same of `relative_eps * slope / std(f(x))`)."""
        scores, gradient = self.score_gradient(x, training=training)
        direction = tf.stop_gradient(tf.sign(gradient))
        moved = self(x + self.h * direction, training=training)
        clean = tf.cast(scores, tf.float32)
        slope = (tf.cast(moved, tf.float32) - clean) / self.h
        if self.relative_eps is not None:
            # The spread is differentiated too: a wider spread is as good as a flatter model.
            slope = self.relative_eps * slope / (tf.math.reduce_std(clean) + 1e-6)
        return scores, self.nt_lambda * 0.5 * tf.reduce_mean(tf.square(slope))

    def defended_loss(self, x, y, sample_weight):
        y_pred, penalty = self.gradient_penalty(x)
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        # Per-replica mean, divided by the replicas like the compiled loss.
        return y_pred, loss + tf.cast(penalty / _replicas(), loss.dtype)

    def get_config(self):
        return {**super().get_config(), "nt_lambda": self.nt_lambda, "h": self.h,
                "relative_eps": self.relative_eps}


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class AdversarialTraining(_DefendedModel):
    """FGSM adversarial training with SSIM-lowered labels (Chistyakova et al., 2024).

    Each step attacks the batch with one FGSM step that raises the predicted score,
    `x_adv = clip(x + eps * sign(grad_x f(x)), 0, 1)`, and trains on the clean batch and
    `x_adv` together (the batch doubles). The attacked images are labelled

        `y_adv = clip(y - label_penalty * (1 - SSIM(x, x_adv)) * (hi - lo), lo, hi)`

    where `SSIM` is `tf.image.ssim(x, x_adv, max_val=1)` per image (11x11 Gaussian window,
    so patches must be at least 11 px) and `(lo, hi) = label_range` is the label scale
    (`[0, 1]`: this package normalises MOS). Why: the perturbation really does degrade the
    image a little, so a model should score it no higher than the clean one, and
    `1 - SSIM` is how much it degraded it, in the label's units when multiplied by the
    label range. With the default `label_penalty=1` this is the authors' "ssim" label
    strategy (github.com/wianluna/metrics_at: `label - penalty * (1 - ssim) * (MAX - MIN)`
    clamped to `[MIN, MAX]`, penalty 1). Their training attack ascends the training loss;
    here it raises the score, the threat model this package evaluates.

    The attack runs in training mode, as in the reference. Metrics are computed on the
    clean half only, so they compare with undefended runs; the logged loss is on both.

    Args:
        inner: the IQA model, one score per image in `label_range`'s units.
        eps: L-inf budget of the FGSM step, in [0, 1] pixel units (4/255 in the paper).
        label_penalty: how many label ranges one unit of `1 - SSIM` lowers the label.
        label_range: `(lo, hi)` of the labels; lowered labels are clipped to it.
    """

    def __init__(self, inner, eps=4 / 255, label_penalty=1.0, label_range=(0.0, 1.0), **kwargs):
        if not 0 < eps <= 1:
            raise ValueError(f"eps must be in (0, 1] (images are in [0, 1]), got {eps!r}.")
        if not 0 <= label_penalty < float("inf"):
            raise ValueError(f"label_penalty must be a finite number >= 0, got {label_penalty!r}.")
        lo, hi = (float(v) for v in label_range)
        if not lo < hi:
            raise ValueError(f"label_range must be (lo, hi) with lo < hi, got {label_range!r}.")
        super().__init__(inner, **kwargs)
        self.eps = float(eps)
        self.label_penalty = float(label_penalty)
        self.label_range = (lo, hi)

    def fgsm(self, x, training=True):
        """One signed gradient step of size `eps` that raises the score, kept in [0, 1]."""
        _, gradient = self.score_gradient(x, training=training)
        return tf.stop_gradient(tf.clip_by_value(x + self.eps * tf.sign(gradient), 0.0, 1.0))

    def lowered_labels(self, y, x, x_adv):
        """`clip(y - label_penalty * (1 - SSIM(x, x_adv)) * (hi - lo), lo, hi)`, per image."""
        size = x.shape[1:3]
        if None not in size and min(size) < 11:
            raise ValueError(f"Adversarial training needs patches of at least 11x11 px for SSIM's "
                             f"11x11 window, got {size[0]}x{size[1]}.")
        lo, hi = self.label_range
        ssim = tf.image.ssim(tf.cast(x, tf.float32), tf.cast(x_adv, tf.float32), max_val=1.0)
        y = tf.cast(y, tf.float32)
        drop = tf.reshape(self.label_penalty * (1.0 - ssim) * (hi - lo), tf.shape(y))
        return tf.stop_gradient(tf.clip_by_value(y - drop, lo, hi))

    def defended_loss(self, x, y, sample_weight):
        x_adv = self.fgsm(x)
        y_adv = self.lowered_labels(y, x, x_adv)

        def both(a, b):
            return None if a is None else tf.concat([a, tf.cast(b, a.dtype)], axis=0)

        y_pred = self(tf.concat([x, x_adv], axis=0), training=True)
        loss = self.compute_loss(
            x=x, y=both(tf.cast(y, tf.float32), y_adv), y_pred=y_pred,
            sample_weight=both(sample_weight, sample_weight),
        )
        return y_pred[: tf.shape(x)[0]], loss

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "label_penalty": self.label_penalty,
                "label_range": list(self.label_range)}


class InnerModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` that saves a defended model's `inner` model (any other model as is).

    A run folder's `model.keras` is then the plain IQA model whatever the training was:
    evaluation, pruning and export load it like any other run.
    """

    def set_model(self, model):
        super().set_model(model.inner if isinstance(model, _DefendedModel) else model)


def defend(model, defense=None, *, eps=4 / 255, nt_lambda=1e-3, nt_h=0.01, scale_free_loss=False):
    """`model` wrapped for `defense` ("nt", "adversarial"), or `model` itself for None.

    `scale_free_loss`: the loss leaves the score's scale free (PLCC, rank), so NT penalises
    the gain at `eps` relative to the batch's score spread (`relative_eps`).
    """
    if defense is None:
        return model
    if defense == "nt":
        return NormRegularizedTraining(model, nt_lambda=nt_lambda, h=nt_h,
                                       relative_eps=eps if scale_free_loss else None)
    if defense == "adversarial":
        return AdversarialTraining(model, eps=eps)
    raise ValueError(f"defense must be one of {DEFENSES} or None, got {defense!r}.")


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


__all__ = ["DEFENSES", "AdversarialTraining", "InnerModelCheckpoint", "NormRegularizedTraining", "defend"]
