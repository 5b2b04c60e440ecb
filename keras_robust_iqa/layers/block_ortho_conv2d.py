import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers import contract, linalg
from keras_robust_iqa.layers.lowered_conv2d import CircularPadding2D, GroupedConv2D, circular_pad
from keras_robust_iqa.layers.validation import (
    check_positive_int,
    float32_dtype_policy,
    input_channels,
    orthogonal_conv_arguments,
    strided_output_shape,
)
from keras_robust_iqa.layers.weight_cache import DerivedWeightCache


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class BlockOrthoConv2D(contract.LayerContract, keras.layers.Layer):
    """Orthogonal 2-D convolution with a compact `k x k` kernel (BCOP / AOC).

    The kernel is a product of orthogonal factors, each exactly orthogonal by
    a Cayley transform (no iterative orthogonalisation):
    - `k - 1` two-tap convolutions along each axis, `[P, I - P]`, with `P`
      a symmetric projector `Q Q^T` (`Q`: orthonormal columns). Such a
      convolution is orthogonal, and so is any product of them
      (Li et al., "Preventing Gradient Attenuation in Lipschitz Constrained
      Convolutional Networks", NeurIPS 2019);
    - one semi-orthogonal `filters x channels` matrix (a 1x1 convolution)
      on the narrower side, so that `filters != channels` gives an isometry
      (more outputs) or a co-isometry (fewer outputs);
    - for `strides=s`, a final `s x s` stride-`s` convolution whose taps form
      one semi-orthogonal matrix (RKO: space-to-depth, then a 1x1 orthogonal
      matrix), fused with the others into one `k x k` strided kernel
      (Boissin et al., "An Adaptive Orthogonal Convolution Scheme", 2025).
    The factors are merged into one kernel (a few small matrix products per
    step, independent of batch and image size), and the layer applies it as
    an ordinary convolution: at inference it is a plain `Conv2D`, at any
    input size.

    As a circular convolution (`padding="circular"`) the layer is orthogonal
    (isometry / co-isometry) at every input size divisible by the stride.
    `padding="same"` zero-pads exactly as `Conv2D(padding="same")`: that is
    a crop of the circular convolution of the zero-padded input, so the
    layer is 1-Lipschitz, though not exactly norm-preserving at the borders.

    Args:
        filters: number of output channels.
        kernel_size: `k`, or `(kh, kw)`; at least `strides`.
        strides: 1 or 2.
        padding: `"same"` or `"circular"`.
        groups: split the channels into this many independent orthogonal
            convolutions (a block-diagonal operator, still orthogonal); must
            divide the input channels and `filters`.
        use_bias: add a bias after the convolution.
        kernel_initializer: initializer of the free matrices the orthogonal
            factors are made from. Default (`None`): normal with standard
            deviation `1 / sqrt(n)` for matrices of `n` rows, which starts
            every factor well away from the identity.

    With `training=False` the merged kernel is cached and recomputed only when
    the weights change. Computation runs in float32 whatever the dtype policy.

    Contract: Lipschitz 1; applies `orthogonal_kernel()`; its output channels are
    prunable when `groups=1` (each free matrix loses the matching rows and columns);
    lowers to a frozen `Conv2D` (a `GroupedConv2D` when grouped, after a
    `CircularPadding2D` for circular padding); `start_from_kernel` fits the factors to
    a trained kernel.
    """

    # Adam steps and learning rate of `start_from_kernel`'s fit.
    FIT_STEPS = 50
    FIT_LEARNING_RATE = 0.05

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        padding="same",
        groups=1,
        use_bias=True,
        kernel_initializer=None,
        bias_initializer="zeros",
        **kwargs,
    ):
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides, self.padding = orthogonal_conv_arguments(
            filters, kernel_size, strides, padding
        )
        if any(k < s for k, s in zip(self.kernel_size, self.strides)):
            raise ValueError(
                f"Argument `kernel_size` must be at least `strides`={self.strides[0]} on both "
                f"axes, got kernel_size={kernel_size!r}."
            )
        self.groups = check_positive_int("groups", groups)
        if self.filters % self.groups:
            raise ValueError(
                f"Argument `groups`={groups} must divide `filters`={filters}, got groups={groups!r}."
            )
        self.use_bias = bool(use_bias)
        self.kernel_initializer = (
            None if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    # Weights ------------------------------------------------------------------

    def build(self, input_shape):
        channels = input_channels(self, input_shape)
        if channels % self.groups:
            raise ValueError(
                f"Argument `groups`={self.groups} must divide the input channels, got "
                f"input_shape={tuple(input_shape)}."
            )
        self._check_spatial(input_shape)
        g, s = self.groups, self.strides[0]
        self.input_channels = channels
        cin, cout = channels // g, self.filters // g
        kh, kw = self.kernel_size
        # Two-tap factors: kh - s along the height, then kw - s along the width.
        self._vertical = kh - s
        factors = (kh - s) + (kw - s)
        # The projectors act on the wider side (stride 1) or on the input
        # (strided: before the stride-s factor); the 1x1 factor on the other.
        width = max(cin, cout) if s == 1 else cin
        self.projector_kernel = None
        if factors and width // 2:
            self.projector_kernel = self._free_weight("projector_kernel", (g, factors, width, width // 2))
        self._factors = factors
        self.mixing_kernel = None
        if s == 1:
            self.mixing_kernel = self._free_weight("mixing_kernel", (g, cout, cin))
        elif factors:
            self.mixing_kernel = self._free_weight("mixing_kernel", (g, cin, cin))
        self.downsampling_kernel = (
            self._free_weight("downsampling_kernel", (g, cout, s * s * cin)) if s > 1 else None
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self._kernel_cache = DerivedWeightCache(
            self._free_weights(), (kh, kw, cin, self.filters), tf.float32, name=f"{self.name}_kernel"
        )

    def _free_weights(self):
        """The free matrices the kernel is made from, in `_merge`'s order."""
        weights = (self.projector_kernel, self.mixing_kernel, self.downsampling_kernel)
        return [w for w in weights if w is not None]

    def _free_weight(self, name, shape):
        initializer = self.kernel_initializer or keras.initializers.RandomNormal(
            stddev=1.0 / max(shape[-2], 1) ** 0.5
        )
        return self.add_weight(name=name, shape=shape, initializer=initializer)

    def _check_spatial(self, input_shape):
        if self.padding != "circular":
            return
        s = self.strides[0]
        for size, k in zip(input_shape[1:3], self.kernel_size):
            if size is not None and (size % s or size < k):
                raise ValueError(
                    f"{type(self).__name__}(padding='circular', strides={s}, kernel_size="
                    f"{self.kernel_size}) needs input sizes divisible by the stride and at "
                    f"least the kernel size, got input_shape={tuple(input_shape)}. Use "
                    "padding='same' for any size."
                )

    # The orthogonal kernel ------------------------------------------------------

    def orthogonal_kernel(self):
        """The merged `(kh, kw, channels // groups, filters)` kernel, Keras layout."""
        return self._merge(*(tf.cast(tf.convert_to_tensor(w), tf.float32) for w in self._free_weights()))

    def _merge(self, *free):
        free = list(free)
        projectors = _projectors(free.pop(0)) if self.projector_kernel is not None else None
        mixing = linalg.cayley(free.pop(0)) if self.mixing_kernel is not None else None
        downsampling = linalg.cayley(free.pop(0)) if self.downsampling_kernel is not None else None
        s = self.strides[0]
        g, cin = self.groups, self.input_channels // self.groups
        cout = self.filters // g
        # Tap arrays `(g, kh, kw, out, in)`: tap (a, b) maps inputs to outputs. There is
        # no mixing factor only for a strided kernel of size `strides` (the RKO factor alone).
        taps = mixing[:, None, None] if mixing is not None else None
        # Stride 1, more outputs: projectors on the output side (left products);
        # fewer outputs: on the input side (right products). Strided: on the input.
        left = s > 1 or cout >= cin
        for i in range(self._factors):
            axis = 1 if i < self._vertical else 2
            p = projectors[:, i, None, None] if projectors is not None else None
            taps = _two_tap(taps, p, axis, left)
        if downsampling is not None:
            down = tf.reshape(downsampling, (g, cout, s, s, cin))
            down = tf.transpose(down, (0, 2, 3, 1, 4))
            taps = down if taps is None else _compose(down, taps)
        # `(g, kh, kw, cout, cin)` -> `(kh, kw, cin, g * cout)`, groups major.
        kh, kw = self.kernel_size
        kernel = tf.transpose(taps, (1, 2, 4, 0, 3))
        return tf.reshape(kernel, (kh, kw, cin, self.filters))

    # The layer contract -----------------------------------------------------------

    def lipschitz_constant(self, input_shape=None):
        return 1.0

    def applied_kernel(self):
        return np.asarray(self.orthogonal_kernel(), np.float64)  # (kh, kw, cin / groups, cout)

    def channel_role(self):
        return contract.PRODUCER if self.groups == 1 else None

    def slice_channels(self, new, kept_in, kept_out):
        """Each factor of `new` is the one nearest the kept block of the old factor.

        The 1x1 factors (mixing, and the stride-s factor's taps) become the
        (semi-)orthogonal matrix nearest the kept rows and columns of the old matrix
        (its polar factor, `nearest_cayley_free`); a projector `P` of width `n` becomes
        the rank `n' // 2` projector nearest its kept block, the span of that block's
        leading eigenvectors. Orthogonal by construction; the kept channels compute
        close to what they computed (not exactly: a block of an orthogonal operator is
        not orthogonal). Slicing the free matrices instead would change them far more:
        the Cayley transform of a block is not the block of the Cayley transform. Where
        a nearest factor has no Cayley parameter, its free matrix is sliced. The
        projectors act on the wider side (the input, when strided), whose kept channels
        index their rows.
        """
        s = self.strides[0]
        if self.projector_kernel is not None and new.projector_kernel is not None:
            rows = kept_out if s == 1 and new.filters >= new.input_channels else kept_in
            free = keras.ops.convert_to_numpy(self.projector_kernel)
            rank = new.projector_kernel.shape[-1]
            projectors = keras.ops.convert_to_numpy(_projectors(tf.constant(free, tf.float32))).astype(np.float64)
            fitted = free[:, :, rows, :rank].copy()
            for index in np.ndindex(*free.shape[:2]):
                # eigh's eigenvalues ascend: the last `rank` vectors span the nearest projector.
                _, vectors = tf.linalg.eigh(tf.constant(projectors[index][np.ix_(rows, rows)]))
                nearest = nearest_cayley_free(vectors[:, -rank:].numpy())
                if nearest is not None:
                    fitted[index] = nearest
            new.projector_kernel.assign(fitted)
        if self.mixing_kernel is not None:
            rows = kept_out if s == 1 else kept_in
            new.mixing_kernel.assign(_nearest_blocks(self.mixing_kernel, rows, kept_in))
        if self.downsampling_kernel is not None:
            # Columns are laid out (tap row, tap column, input channel).
            channels = self.input_channels
            columns = [tap * channels + c for tap in range(s * s) for c in kept_in]
            new.downsampling_kernel.assign(_nearest_blocks(self.downsampling_kernel, kept_out, columns))
        if self.use_bias:
            new.bias.assign(keras.ops.convert_to_numpy(self.bias)[kept_out])

    def lowered(self):
        """The `Conv2D` this layer computes: its merged kernel, frozen.

        A grouped one becomes a `GroupedConv2D` (one TensorFlow Conv2D op, which ONNX
        reads; Keras's grouped Conv2D runs in an XLA function, which it cannot).
        """
        grouped = self.groups > 1
        conv = (GroupedConv2D if grouped else keras.layers.Conv2D)(
            self.filters, self.kernel_size, strides=self.strides, groups=self.groups,
            padding="valid" if self.padding == "circular" else "same", use_bias=self.use_bias,
            name=self.name, trainable=False,
        )
        conv.build((None, None, None, self.input_channels))
        conv.kernel.assign(keras.ops.convert_to_numpy(self.orthogonal_kernel()))
        if self.use_bias:
            conv.bias.assign(keras.ops.convert_to_numpy(self.bias))
        if self.padding != "circular":
            return conv
        pad = CircularPadding2D(self.kernel_size, self.strides[0], name=f"{self.name}_circular_pad")
        return keras.Sequential([pad, conv], name=self.name)

    def start_from_kernel(self, kernel):
        """Fit the orthogonal factors to a trained `(kh, kw, cin / groups, filters)` kernel.

        A 1x1 kernel (stride 1) is one matrix per group: its factor becomes the Cayley
        parameter of the nearest (semi-)orthogonal matrix that the Cayley transform reaches
        (`nearest_cayley_free`). Larger kernels are fitted: the orthogonal convolution
        nearest `K` in the Frobenius norm maximises `<Q, K>`
        (every orthogonal kernel has the same norm), so `FIT_STEPS` Adam steps from the
        current factors maximise `<Q, K / ||K||>` over the kernels this parametrisation
        reaches. The problem is not convex and the Cayley factors reach only part of
        the orthogonal kernels (determinant +1 factors): the result is a local optimum,
        the nearest orthogonal kernel only where the fit finds it. Returns False (and
        changes nothing) for a kernel of another shape or all zeros.
        """
        target = np.asarray(keras.ops.convert_to_numpy(kernel), np.float32)
        shape = (*self.kernel_size, self.input_channels // self.groups, self.filters)
        if target.shape != shape or not np.any(target):
            return False
        if self.kernel_size == (1, 1) and self.strides[0] == 1:
            # One orthogonal matrix per group: the nearest is known in closed form.
            cout = self.filters // self.groups
            free = [nearest_cayley_free(target[0, 0, :, g * cout:(g + 1) * cout].T) for g in range(self.groups)]
            if all(f is not None for f in free):
                self.mixing_kernel.assign(np.stack(free))
                return True
        target = tf.constant(target / np.linalg.norm(target))
        free = self._free_weights()
        fitted = _fit_function(self)([tf.convert_to_tensor(w) for w in free], target)
        for weight, value in zip(free, fitted):
            weight.assign(value)
        return True

    # Computation --------------------------------------------------------------

    def call(self, inputs, training=None):
        x = tf.cast(inputs, tf.float32)
        if training:
            kernel = self.orthogonal_kernel()
        else:
            kernel = self._kernel_cache.get(self._merge)
        s = self.strides[0]
        padding = "same"
        if self.padding == "circular":
            self._check_spatial(x.shape)
            x, padding = circular_pad(x, self.kernel_size, s), "valid"
        # keras.ops.conv, not tf.nn.conv2d: TensorFlow has no CPU gradient for
        # grouped convolutions, and Keras compiles those with XLA.
        y = keras.ops.conv(x, kernel, strides=s, padding=padding)
        if self.use_bias:
            y = y + self.bias
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return strided_output_shape(input_shape, self.filters, self.strides[0], self.padding)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            groups=self.groups,
            use_bias=self.use_bias,
            kernel_initializer=(
                None if self.kernel_initializer is None
                else keras.initializers.serialize(self.kernel_initializer)
            ),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config


def _nearest_blocks(free, rows, columns):
    """`(g, m, n)` free matrices -> free matrices of the (semi-)orthogonal matrices nearest the
    `rows x columns` blocks of their Cayley transforms (a block's free matrix, sliced, where
    the nearest has no Cayley parameter)."""
    free = keras.ops.convert_to_numpy(free)
    orthogonal = keras.ops.convert_to_numpy(linalg.cayley(tf.constant(free, tf.float32)))
    fitted = free[:, rows][:, :, columns].copy()
    for g in range(len(free)):
        nearest = nearest_cayley_free(orthogonal[g][np.ix_(rows, columns)])
        if nearest is not None:
            fitted[g] = nearest
    return fitted


def _projectors(free):
    """`(..., n, r)` free matrices -> `(..., n, n)` symmetric projectors `Q Q^T` of rank `r`."""
    q = linalg.cayley(free)
    return tf.matmul(q, q, transpose_b=True)


def _two_tap(taps, projector, axis, left):
    """`taps` composed with the two-tap orthogonal convolution `[P, I - P]` along `axis`.

    `left`: the new factor comes after `taps` (`P @ taps`), else before
    (`taps @ P`). `projector=None` is `P = 0`: a shift by one tap.
    """
    if projector is None:
        first = tf.zeros_like(taps)
    else:
        first = tf.matmul(projector, taps) if left else tf.matmul(taps, projector)
    rest = taps - first
    pad_first = [[0, 0]] * 5
    pad_rest = [[0, 0]] * 5
    pad_first[axis] = [0, 1]
    pad_rest[axis] = [1, 0]
    return tf.pad(first, pad_first) + tf.pad(rest, pad_rest)


def _compose(outer, inner):
    """Tap arrays of `outer` after `inner`: a full 2-D convolution with matrix products.

    `(g, a, b, m, n)` and `(g, c, d, n, l)` -> `(g, a + c - 1, b + d - 1, m, l)`:
    tap `(i, j)` of the result sums `outer[i - i'] @ inner[i']` (stride-s
    outer taps fuse the same way: they read the inner output at `s p + i`).
    """
    a, b = outer.shape[1], outer.shape[2]
    total = 0.0
    for i in range(a):
        for j in range(b):
            product = tf.matmul(outer[:, i, j, None, None], inner)
            total += tf.pad(product, [[0, 0], [i, a - 1 - i], [j, b - 1 - j], [0, 0], [0, 0]])
    return total


# One traced fit per kernel configuration (a backbone repeats a few), see `_fit_function`.
_FITS = {}


def _fit_function(layer):
    """`fit(free, target)`: the free matrices after `FIT_STEPS` Adam steps maximising `<Q, target>`.

    A function of tensors (Adam written out), traced once for each configuration the merge
    depends on and shared by every layer of that configuration: tracing costs far more than
    the steps.
    """
    key = (layer.kernel_size, layer.strides, layer.groups, layer.input_channels, layer.filters,
           layer.FIT_STEPS, layer.FIT_LEARNING_RATE)
    if key in _FITS:
        return _FITS[key]
    merge = layer._merge  # depends on the configuration only, not on the layer's weights
    steps, rate = layer.FIT_STEPS, layer.FIT_LEARNING_RATE
    beta1, beta2, eps = 0.9, 0.999, 1e-7

    @tf.function(reduce_retracing=True)
    def fit(free, target):
        first = [tf.zeros_like(w) for w in free]
        second = [tf.zeros_like(w) for w in free]
        for step in tf.range(1, steps + 1):
            with tf.GradientTape() as tape:
                tape.watch(free)
                loss = -tf.reduce_sum(merge(*free) * target)
            grads = tape.gradient(loss, free)
            t = tf.cast(step, tf.float32)
            first = [beta1 * m + (1 - beta1) * g for m, g in zip(first, grads)]
            second = [beta2 * v + (1 - beta2) * g * g for v, g in zip(second, grads)]
            scale = rate * tf.sqrt(1 - beta2**t) / (1 - beta1**t)
            free = [w - scale * m / (tf.sqrt(v) + eps) for w, m, v in zip(free, first, second)]
        return free

    _FITS[key] = fit
    return fit


def nearest_cayley_free(m, atol=1e-4):
    """A free matrix `w` whose `linalg.cayley(w)` is the (semi-)orthogonal matrix nearest `m`.

    The nearest matrix with orthonormal columns (rows, for a wide `m`) in the Frobenius
    norm is the polar factor `U V^T` of `m = U S V^T`. A square Cayley transform has
    determinant +1, so where `det(U V^T) = -1` the nearest one it reaches flips the
    direction of the smallest singular value. The transform is then inverted
    (`linalg.cayley`'s construction, solved for `w`). Returns None where it cannot be
    (an eigenvalue -1, or a result that does not reproduce the target within `atol`).
    """
    m = tf.constant(m, tf.float64)
    rows, cols = m.shape
    if rows < cols:
        w = nearest_cayley_free(tf.transpose(m), atol)
        return None if w is None else w.T
    # TensorFlow's linear algebra, not numpy's: numpy's BLAS threads contend with TensorFlow's.
    _, u, v = tf.linalg.svd(m)
    if rows == cols and float(tf.linalg.det(u @ tf.transpose(v))) < 0:
        u = tf.concat([u[:, :-1], -u[:, -1:]], axis=1)
    q = u @ tf.transpose(v)
    top, bottom = q[:cols], q[cols:]
    eye = tf.eye(cols, dtype=tf.float64)
    try:
        inverse = tf.linalg.inv(top + eye)
    except tf.errors.InvalidArgumentError:  # an eigenvalue -1: no Cayley parameter
        return None
    # cayley: top = 2 (I + a)^-1 - I, bottom = -2 v (I + a)^-1, a = u - u^T + v^T v.
    a = 2.0 * inverse - eye
    v = -bottom @ inverse
    skew = a - tf.transpose(v) @ v
    w = tf.cast(tf.concat([skew / 2.0, v], axis=0), tf.float32)
    gap = tf.reduce_max(tf.abs(tf.cast(linalg.cayley(w), tf.float64) - q))
    if not bool(tf.reduce_all(tf.math.is_finite(w))) or float(gap) > atol:
        return None
    return w.numpy()
