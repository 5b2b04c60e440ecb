"""What a model costs: parameters, FLOPs per image, inference latency."""

import math
import time

import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa import layers as robust_layers


def leaf_layers(model):
    """The layers of `model`, nested models (functional or Sequential) opened up."""
    out = []
    for layer in model.layers:
        out.extend(leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def _fft_flops(height, width):
    """A real 2-D FFT (or its inverse) of one channel: `2.5 N log2 N`, half a complex FFT."""
    n = height * width
    return 2.5 * n * math.log2(n)


def layer_flops(layer):
    """FLOPs of one layer on one image at inference (a multiply-add is 2 FLOPs).

    Counted: convolutions and dense layers, the orthogonal convolution as it
    runs (rfft2d of each input channel, one complex `cout x cin` matrix per
    frequency, irfft2d of each output channel), bias additions and
    BatchNormalization (a scale and a shift), ChannelGain (a scale). Not counted: activations,
    sorting, pooling, and the per-batch work that depends on the weights only
    (the Cayley transform of `OrthoDense`; `OrthoConv2D` caches it).
    """
    out_size = math.prod(layer.output.shape[1:])
    if isinstance(layer, robust_layers.RobustBlock):
        layer = layer.conv  # GroupSort and the convex residual are not counted
    bias = out_size if getattr(layer, "use_bias", False) else 0
    if isinstance(layer, robust_layers.OrthoConv2D):
        fh, fw = layer.fft_size
        frequencies = fh * (fw // 2 + 1)
        cin, cout = layer.input_channels, layer.filters
        return int((cin + cout) * _fft_flops(fh, fw) + 8 * frequencies * cout * cin + bias)
    if isinstance(layer, robust_layers.BlockOrthoConv2D):
        kh, kw = layer.kernel_size
        return 2 * out_size * kh * kw * (layer.input_channels // layer.groups) + bias
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return 2 * out_size * kh * kw + bias
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        cin = layer.input.shape[-1] // layer.groups
        return 2 * out_size * kh * kw * cin + bias
    if isinstance(layer, (keras.layers.Dense, robust_layers.OrthoDense)):
        return 2 * out_size * layer.input.shape[-1] + bias
    if isinstance(layer, keras.layers.BatchNormalization):
        return 2 * out_size
    if isinstance(layer, robust_layers.ChannelGain):
        return out_size
    return 0


def count_flops(model):
    """FLOPs of `model` on one input (one patch), summed over `layer_flops`."""
    return int(sum(layer_flops(layer) for layer in leaf_layers(model)))


def inference_latency(model, batch_size=16, repeats=20, seed=0):
    """Median seconds of one compiled inference call on a batch of random inputs."""
    shape = (batch_size, *model.inputs[0].shape[1:])
    x = tf.constant(np.random.default_rng(seed).uniform(size=shape).astype("float32"))
    infer = tf.function(lambda x: model(x, training=False), jit_compile=False)
    for _ in range(2):  # trace, then warm the caches
        np.asarray(infer(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(infer(x))
        times.append(time.perf_counter() - start)
    return float(np.median(times))
