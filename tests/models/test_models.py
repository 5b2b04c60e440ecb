import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.layers.linalg import jacobian_spectral_norm
from keras_robust_iqa.models import (
    backbone_iqa_model,
    build_model,
    lipschitz_bound,
    patch_grid,
    robustify,
    score_images,
    sll_iqa_net,
    small_iqa_cnn,
    stage_ends,
)
from keras_robust_iqa.models.graph import flat_layers


def photo_patches(n=6, size=32):
    img = skimage.data.astronaut().astype("float32") / 255.0
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        i, j = rng.integers(0, 512 - size, 2)
        out.append(img[i : i + size, j : j + size])
    return np.stack(out)


def perturb_weights(model, scale=0.3, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([w + scale * rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])


def test_small_cnn_shapes_and_bad_patch():
    model = small_iqa_cnn(32)
    assert model.output_shape == (None, 1)
    assert stage_ends(model) == ["relu1", "relu2", "relu3", "relu4"]
    with pytest.raises(ValueError, match="patch_size`=30"):
        small_iqa_cnn(30)


def test_build_model_width_scales_the_small_models_channels():
    wide = build_model("small", 32, width=2)
    convs = [layer for layer in wide.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128, 128]
    assert wide.get_layer("fc1").units == 128
    # Odd products round to even counts, which GroupSort can pair.
    assert [c.filters for c in build_model("small", 32, width=0.3).layers if isinstance(c, keras.layers.Conv2D)] == [
        4, 10, 20, 20]
    with pytest.raises(ValueError, match="width`=2.*resnet50"):
        build_model("resnet50", 32, width=2)
    with pytest.raises(ValueError, match="width` must be a positive"):
        build_model("small", 32, width=0)


def test_insert_keeps_backbone_and_adds_residual_blocks():
    base = small_iqa_cnn(32)
    perturb_weights(base, 0.05)
    model = robustify(base, "insert")
    blocks = [layer for layer in model.layers if isinstance(layer, robust_layers.RobustBlock)]
    assert [b.name for b in blocks] == ["relu2_robust_block", "relu3_robust_block", "relu4_robust_block"]
    assert all(b.residual for b in blocks)
    # The backbone's weights are the base model's.
    for layer in base.layers:
        for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    x = photo_patches()
    assert model(x).shape == (6, 1)
    # The base model is left unchanged and still works.
    assert base(x).shape == (6, 1)
    custom = robustify(base, "insert", after=["relu1"])
    blocks = [layer.name for layer in custom.layers if isinstance(layer, robust_layers.RobustBlock)]
    assert blocks == ["relu1_robust_block"]


def test_insert_with_block_convolutions():
    base = small_iqa_cnn(32)
    model = robustify(base, "insert", conv="block")
    blocks = [layer for layer in model.layers if isinstance(layer, robust_layers.RobustBlock)]
    assert len(blocks) == 3 and all(isinstance(b.conv, robust_layers.BlockOrthoConv2D) for b in blocks)
    assert model(photo_patches()).shape == (6, 1)
    with pytest.raises(ValueError, match="conv='fft'"):
        robustify(base, "insert", conv="fft")


def test_replace_turns_depthwise_convolutions_into_grouped_block_convolutions():
    inputs = keras.Input((15, 15, 24))
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw_valid")(x)
    x = keras.layers.Conv2D(13, 1, name="pw")(x)
    x = keras.layers.DepthwiseConv2D(5, padding="same", name="dw_prime")(x)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x))
    model = robustify(keras.Model(inputs, outputs), "replace", conv="block")
    dw = model.get_layer("dw_ortho")
    assert (dw.groups, dw.filters, dw.strides) == (3, 24, (2, 2))  # groups of 8 channels
    valid = model.get_layer("dw_valid")
    assert isinstance(valid, keras.Sequential)  # cropped back to the original's 6x6
    assert (valid.layers[0].groups, valid.layers[0].filters) == (3, 48)
    assert model.get_layer("dw_prime_ortho").groups == 1  # 13 channels: no divisor in 8..12
    x = np.random.default_rng(0).uniform(size=(2, 15, 15, 24)).astype("float32")
    assert model(x).shape == (2, 1)
    bound = lipschitz_bound(model)
    empirical = np.asarray(jacobian_spectral_norm(lambda t: model(t, training=False), x, iterations=10))
    assert 0 < empirical.max() <= bound * (1 + 1e-4)


def test_insert_bottleneck_narrows_the_blocks_of_mobilenetv2():
    """The issue's case: MobileNetV2 (alpha 0.35, 32x32) grew from 0.4 M to 5.5 M parameters."""
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None,
                                          pooling="avg")
    full, narrow = robustify(base, "insert"), robustify(base, "insert", bottleneck=32)
    assert base.count_params() == 410_208 and full.count_params() > 5_000_000
    blocks = [layer for layer in narrow.layers if isinstance(layer, robust_layers.RobustBlock)]
    assert [block.filters for block in blocks] == [48, 48, 96, 192, 1280]
    # Each block holds two 1x1 maps between C and 32 channels and a 3x3 one at 32: C^2 is gone.
    for block in blocks:
        kernels = [np.prod(w.shape) for w in block.trainable_weights if len(w.shape) > 1]
        assert max(kernels) <= max(32 * block.filters, 32 * 32 * 9)
    assert narrow.count_params() < 1.4 * base.count_params()


def test_insert_bottleneck_starts_at_the_identity_and_is_certified_where_it_claims():
    base = small_iqa_cnn(32)
    perturb_weights(base, 0.05)
    model = robustify(base, "insert", bottleneck=8, conv="aol")
    blocks = [layer for layer in model.layers if isinstance(layer, robust_layers.RobustBlock)]
    assert blocks and all(block.bottleneck == 8 for block in blocks)
    x = photo_patches(4, 32)
    for block in blocks:
        block.residual_logit.assign(40.0)  # lambda = sigmoid(40) = 1 in float32
    np.testing.assert_allclose(model.predict(x, verbose=0), base.predict(x, verbose=0), atol=1e-6)
    # Each block alone, off its identity, stays 1-Lipschitz.
    for block in blocks:
        block.residual_logit.assign(-1.0)
        maps = block.input.shape[1:]
        fn = lambda t, block=block: block(t, training=False)  # noqa: E731
        norms = jacobian_spectral_norm(fn, np.random.default_rng(0).normal(size=(1, *maps)).astype("float32"),
                                       iterations=8)
        assert np.all(np.asarray(norms) <= 1 + 1e-4)
    with pytest.raises(ValueError, match="bottleneck"):
        robustify(base, "replace", bottleneck=8)


def test_insert_bad_arguments():
    base = small_iqa_cnn(32)
    with pytest.raises(ValueError, match="not in the model: \\['nope'\\]"):
        robustify(base, "insert", after=["nope"])
    with pytest.raises(ValueError, match="'fc1' has output shape"):
        robustify(base, "insert", after=["fc1"])
    with pytest.raises(ValueError, match="mode='sideways'"):
        robustify(base, "sideways")


@pytest.mark.parametrize("conv", ["fourier", "block"])
def test_replace_is_certified_and_sound_on_real_images(conv):
    base = small_iqa_cnn(32)
    model = robustify(base, "replace", conv=conv)
    ortho = robust_layers.OrthoConv2D if conv == "fourier" else robust_layers.BlockOrthoConv2D
    assert sum(isinstance(layer, ortho) for layer in model.layers) == 4
    allowed = (
        ortho, robust_layers.OrthoDense, robust_layers.GroupSort,
        robust_layers.L2NormPooling2D, robust_layers.GlobalL2NormPooling2D,
        robust_layers.OutputScale, keras.layers.Identity, keras.layers.InputLayer, keras.Sequential,
        keras.layers.Rescaling,
    )
    assert all(isinstance(layer, allowed) for layer in model.layers), [type(layer).__name__ for layer in model.layers]
    perturb_weights(model, 0.2)
    model.get_layer("output_scale").scale.assign(7.0)
    bound = lipschitz_bound(model)
    assert bound == pytest.approx(7.0 / 4.0)  # |scale| / sqrt(4 x 4 final positions)
    x = photo_patches(4)
    empirical = np.asarray(jacobian_spectral_norm(lambda t: model(t, training=False), x, iterations=10))
    assert empirical.max() <= bound * (1 + 1e-4)
    assert empirical.max() > 0  # a real measurement
    # Whole 64x96 images, patch-averaged over a 2x3 grid: the bound shrinks by sqrt(6).
    assert lipschitz_bound(model, image_shape=(64, 96)) == pytest.approx(bound / np.sqrt(6))


def test_replace_with_relu_is_certified_and_sound():
    base = small_iqa_cnn(32)
    model = robustify(base, "replace", activation="relu")
    acts = [layer for layer in model.layers if isinstance(layer, (keras.layers.ReLU, robust_layers.GroupSort))]
    assert [type(layer).__name__ for layer in acts] == ["ReLU"] * 4  # relu1..relu4; fc1's is inside a Sequential
    assert isinstance(model.get_layer("fc1").layers[-1], keras.layers.ReLU)
    perturb_weights(model, 0.2)
    model.get_layer("output_scale").scale.assign(7.0)
    bound = lipschitz_bound(model)
    assert bound == pytest.approx(7.0 / 4.0)  # the same certificate as with GroupSort
    x = photo_patches(4)
    empirical = np.asarray(jacobian_spectral_norm(lambda t: model(t, training=False), x, iterations=10))
    assert 0 < empirical.max() <= bound * (1 + 1e-4)
    with pytest.raises(ValueError, match="activation=\'tanh\'"):
        robustify(base, "replace", activation="tanh")
    with pytest.raises(ValueError, match="applies to mode='replace'"):
        robustify(base, "insert", activation="relu")


def test_replace_with_invertible_pooling_keeps_every_value_and_is_sound(tmp_path):
    base = small_iqa_cnn(32)
    model = robustify(base, "replace", activation="relu", pooling="invertible")
    pooling = (robust_layers.L2NormPooling2D, robust_layers.InvertibleDownsampling)
    pools = [layer for layer in model.layers if isinstance(layer, pooling)]
    assert [type(layer).__name__ for layer in pools] == ["InvertibleDownsampling"] * 3
    # The convolution after each space-to-depth reads 4 times the channels before it.
    convs = [layer for layer in model.layers if isinstance(layer, robust_layers.BlockOrthoConv2D)]
    assert [c.input_channels for c in convs] == [3, 4 * 16, 4 * 32, 4 * 64]
    x = photo_patches(4)
    # A permutation of the values: the norm of each patch is kept exactly.
    np.testing.assert_allclose(np.linalg.norm(pools[0](x).numpy().reshape(4, -1), axis=1),
                               np.linalg.norm(x.reshape(4, -1), axis=1), rtol=1e-6)
    perturb_weights(model, 0.2)
    model.get_layer("output_scale").scale.assign(7.0)
    bound = lipschitz_bound(model)
    assert bound == pytest.approx(7.0 / 4.0)
    empirical = np.asarray(jacobian_spectral_norm(lambda t: model(t, training=False), x, iterations=10))
    assert 0 < empirical.max() <= bound * (1 + 1e-4)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="pooling='average'"):
        robustify(base, "replace", pooling="average")
    with pytest.raises(ValueError, match="`pooling` applies to mode='replace'"):
        robustify(base, "insert", pooling="invertible")


def test_replace_with_channel_gains_is_certified_and_sound():
    base = small_iqa_cnn(32)
    model = robustify(base, "replace", activation="relu", channel_gains=True)
    gains = [layer for layer in model._flatten_layers() if isinstance(layer, robust_layers.ChannelGain)]
    # After each orthogonal layer but the last, whose gain OutputScale already is.
    assert [g.name for g in gains] == ["conv1_gain", "conv2_gain", "conv3_gain", "conv4_gain", "fc1_gain"]
    assert lipschitz_bound(model) == pytest.approx(lipschitz_bound(robustify(base, "replace", activation="relu")))
    perturb_weights(model, 0.2)
    rng = np.random.default_rng(1)
    for gain in gains:  # every layer's largest gain is 0.8: the bound shrinks by 0.8 ** 5
        values = rng.uniform(-0.8, 0.8, size=gain.gain.shape)
        values[0] = 0.8
        gain.gain.assign(values)
    model.get_layer("output_scale").scale.assign(7.0)
    bound = lipschitz_bound(model)
    assert bound == pytest.approx(7.0 / 4.0 * 0.8**5, rel=1e-6)
    x = photo_patches(4)
    empirical = np.asarray(jacobian_spectral_norm(lambda t: model(t, training=False), x, iterations=10))
    assert 0 < empirical.max() <= bound * (1 + 1e-4)
    with pytest.raises(ValueError, match="`channel_gains` applies to mode='replace'"):
        robustify(base, "insert", channel_gains=True)


def test_invertible_pooling_refuses_a_residual_that_skips_it():
    # space-to-depth widens the pooled branch (4 -> 16 channels); the Add's other branch
    # keeps 4, and the convex combination says so by name instead of failing in TensorFlow.
    inputs = keras.Input((16, 16, 4))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    pooled = keras.layers.MaxPooling2D(2)(x)
    shortcut = keras.layers.Conv2D(4, 1, strides=2)(x)
    y = keras.layers.Add(name="skip_add")([pooled, shortcut])
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(y))
    model = keras.Model(inputs, outputs)
    assert robustify(model, "replace").output_shape == (None, 1)  # L2-norm pooling keeps 4
    message = r"'skip_add' needs inputs of one shape, got \[\(None, 8, 8, 16\), \(None, 8, 8, 4\)\]"
    with pytest.raises(ValueError, match=message):
        robustify(model, "replace", pooling="invertible")


def test_lipschitz_of_relu_variants():
    from keras_robust_iqa.models.lipschitz import layer_lipschitz

    assert layer_lipschitz(keras.layers.ReLU(max_value=6.0)) == 1.0
    assert layer_lipschitz(keras.layers.ReLU(negative_slope=0.2)) == 1.0
    assert layer_lipschitz(keras.layers.LeakyReLU(negative_slope=3.0)) == 3.0
    with pytest.raises(ValueError, match="threshold=0.5"):
        layer_lipschitz(keras.layers.ReLU(threshold=0.5, name="jumpy"))


def test_replace_centres_inputs_with_a_shift_that_keeps_the_bound():
    base = small_iqa_cnn(32)
    # The weights are set below (and the ResNet50 is random): no start from kernels is needed.
    centred = robustify(base, "replace", keep_weights=False)
    plain = robustify(base, "replace", input_offset=None, keep_weights=False)
    # The centring layer reads the input and feeds the first convolution.
    readers = [layer for layer in centred.layers if layer.input is centred.inputs[0] or layer.input is centred.input]
    assert [type(layer).__name__ for layer in readers] == ["Rescaling"]
    assert centred.get_layer("centre_inputs").offset == -0.5
    assert "centre_inputs" not in [layer.name for layer in plain.layers]
    perturb_weights(plain, 0.2)
    centred.set_weights(plain.get_weights())
    x = photo_patches(4)
    np.testing.assert_allclose(centred(x), plain(x - 0.5), atol=1e-5)
    assert lipschitz_bound(centred) == pytest.approx(lipschitz_bound(plain))
    # Backbones preprocess their inputs themselves: no second shift.
    resnet = robustify(backbone_iqa_model("resnet50", 32, weights=None), "replace", keep_weights=False)
    assert "centre_inputs" not in [layer.name for layer in resnet.layers]


@pytest.mark.parametrize("conv", ["fourier", "block"])
def test_replace_round_trips(tmp_path, conv):
    model = robustify(small_iqa_cnn(32), "replace", conv=conv)
    x = photo_patches()
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=1e-6)
    assert lipschitz_bound(reloaded) == pytest.approx(lipschitz_bound(model))


def test_lipschitz_bound_refuses_uncertifiable_models():
    with pytest.raises(ValueError, match="'conv1' \\(Conv2D\\)"):
        lipschitz_bound(small_iqa_cnn(32))
    insert = robustify(small_iqa_cnn(32), "insert")
    with pytest.raises(ValueError, match="cannot certify"):
        lipschitz_bound(insert)


def test_replace_resnet50_crops_and_convex_residuals():
    # Structure and certificate only: a forward pass of a 23M-parameter
    # orthogonal ResNet50 costs minutes of Cayley solves on a CPU, and so does fitting
    # its 3x3 kernels to random weights (keep_weights is tested on a small model).
    base = backbone_iqa_model("resnet50", 32, weights=None)
    model = robustify(base, "replace", keep_weights=False)
    sub = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert sub, "the backbone is a nested model"
    nested = sub[0]
    kinds = {type(layer).__name__ for layer in nested.layers}
    assert "ConvexCombination" in kinds and "Add" not in kinds
    assert "Conv2D" not in kinds and "BatchNormalization" not in kinds
    assert model.output_shape == (None, 1)
    bound = lipschitz_bound(model)
    assert 0 < bound < np.inf


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv3", "efficientnetv2b0"])
def test_backbones_build_and_load_weight_files(name, tmp_path):
    model = build_model(name, 64)
    x = photo_patches(2, 64)
    assert model(x).shape == (2, 1)
    path = tmp_path / "m.keras"
    model.save(path)
    again = build_model(name, 64, weights=str(path))
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="'vgg'"):
        build_model("vgg")
    with pytest.raises(FileNotFoundError, match="no such file"):
        backbone_iqa_model("resnet50", 64, weights="/nonexistent.weights.h5")


def test_score_images_averages_a_centred_grid():
    model = small_iqa_cnn(32)
    img = skimage.data.coffee()[:70, :100].astype("float32") / 255.0  # 2 x 3 grid, borders left out
    grid = np.asarray(patch_grid(img[None], 32)[0])
    assert grid.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(grid[0], img[3:35, 2:34])
    expected = model.predict(grid, verbose=0).mean()
    np.testing.assert_allclose(score_images(model, [img]), [expected], rtol=1e-5)
    with pytest.raises(ValueError, match="smaller than the patch size 32"):
        score_images(model, [img[:20]])


def _nearest_rotation(m):
    """The matrix with orthonormal columns (rows) nearest `m`, of determinant +1 when square."""
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    if m.shape[0] == m.shape[1] and np.linalg.det(u @ vt) < 0:
        u[:, -1] = -u[:, -1]
    return u @ vt


def test_keep_weights_starts_block_convolutions_from_the_trained_kernels():
    """A 1x1 BlockOrthoConv2D takes the nearest orthogonal matrix; a 3x3 one a kernel fitted to the trained one."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((9, 9, 3)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Conv2D(6, 1),
        keras.layers.Conv2D(10, 1),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1),
    ])
    kept = robustify(model, "replace", keep_weights=True)
    fresh = robustify(model, "replace", keep_weights=False)

    def kernel(m, name):
        return next(layer for layer in flat_layers(m) if layer.name == f"{name}_ortho").applied_kernel()

    conv3, conv_narrow, conv_wide = model.layers[:3]
    for conv in (conv_narrow, conv_wide):  # fewer, then more outputs than inputs
        trained = np.asarray(conv.kernel, np.float64)[0, 0]  # (in, out)
        np.testing.assert_allclose(kernel(kept, conv.name)[0, 0], _nearest_rotation(trained.T).T, atol=1e-4)
    trained = np.asarray(conv3.kernel, np.float64)
    trained /= np.linalg.norm(trained)
    fitted, random = (float(np.sum(kernel(m, conv3.name) * trained)) for m in (kept, fresh))
    # <Q, K / ||K||> <= ||Q|| = sqrt(min(in, out) * taps of an orthogonal 3x3 kernel): bounded, and far above random.
    assert fitted > 0.7 * np.linalg.norm(kernel(kept, conv3.name)), (fitted, random)
    assert fitted > random + 0.5
    # Still orthogonal: the model stays certified.
    scale = abs(float(kept.get_layer("output_scale").scale.numpy()))
    assert lipschitz_bound(kept) == pytest.approx(scale / 7, rel=1e-6)  # GlobalL2NormPooling2D on 7 x 7: 1 / 7


# The 1-Lipschitz network of SLL layers (`build_model("sll")`) --------------------------------


@pytest.fixture(scope="module")
def sll_net():
    """A small `sll` network moved off its initialisation, with a gain of 3."""
    model = build_model("sll", 32, width=0.5)
    perturb_weights(model, 0.2)
    model.get_layer("output_scale").scale.assign(3.0)
    return model


def gradient_norms(model, x):
    """`||grad f(x)||_2` per sample: the Jacobian's spectral norm of a one-output model, exactly."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(model(x, training=False))
    return np.linalg.norm(np.asarray(tape.gradient(y, x)).reshape(len(x), -1), axis=1)


def test_sll_network_is_built_from_certified_parts(sll_net):
    kinds = {type(layer).__name__ for layer in sll_net.layers}
    assert {"AOLConv2D", "SLLConv2D", "InvertibleDownsampling", "GlobalL2NormPooling2D", "OutputScale"} <= kinds
    assert [layer.filters for layer in sll_net.layers if isinstance(layer, robust_layers.AOLConv2D)] == [8, 16, 32]
    assert sum(isinstance(layer, robust_layers.SLLConv2D) for layer in sll_net.layers) == 6
    # Every layer 1-Lipschitz but the scale and the pooling over the last 4x4 map.
    assert lipschitz_bound(sll_net) == pytest.approx(3.0 / 4.0)


def test_sll_bound_holds_at_real_and_random_inputs(sll_net):
    bound = lipschitz_bound(sll_net)
    x = np.concatenate([photo_patches(4, 32), np.random.default_rng(1).uniform(size=(4, 32, 32, 3))]).astype("float32")
    norms = gradient_norms(sll_net, x)
    assert np.all(norms <= bound * (1 + 1e-4)), (norms, bound)
    assert norms.max() > 0.01 * bound  # the network does respond to its input
    # Finite differences along random directions never beat it either.
    step = np.random.default_rng(2).normal(size=x.shape).astype("float32") * 0.05
    change = np.abs(sll_net.predict(x + step, verbose=0) - sll_net.predict(x, verbose=0)).ravel()
    assert np.all(change <= bound * np.linalg.norm(step.reshape(len(x), -1), axis=1) * (1 + 1e-4))


def test_sll_fits_and_round_trips(tmp_path):
    model = sll_iqa_net(16, widths=(4, 8), depth=1, head_units=4)
    x = photo_patches(8, 16)
    y = np.linspace(0.2, 0.8, 8, dtype="float32")[:, None]
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    before = np.asarray(model(x))
    loss = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    after = np.asarray(model(x))
    assert not np.allclose(after, before)
    model.save(tmp_path / "sll.keras")
    loaded = keras.saving.load_model(tmp_path / "sll.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x)), after, atol=1e-6)
    assert lipschitz_bound(loaded) == pytest.approx(lipschitz_bound(model))


def test_sll_bad_arguments():
    with pytest.raises(ValueError, match="patch_size`=36 must be divisible by 8"):
        sll_iqa_net(36)
    with pytest.raises(ValueError, match="depth"):
        sll_iqa_net(32, depth=0)
    with pytest.raises(ValueError, match="head_units"):
        sll_iqa_net(32, head_units=5)
    with pytest.raises(ValueError, match="weights"):
        build_model("sll", 32, weights="imagenet")
