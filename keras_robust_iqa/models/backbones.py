"""IQA models on `keras.applications` backbones: ResNet50, MobileNetV3, EfficientNetV2-B0."""

import os

import keras

from keras_robust_iqa.layers.contract import LayerContract

# name -> (constructor, how it wants its pixels). The models take images in
# [0, 1]; `Rescaling` turns them into what the backbone was trained on.
BACKBONES = {
    "resnet50": (keras.applications.ResNet50, "caffe"),
    "mobilenetv3": (keras.applications.MobileNetV3Small, "0_255"),
    "efficientnetv2b0": (keras.applications.EfficientNetV2B0, "0_255"),
}

# ImageNet channel means in BGR order, for caffe-style preprocessing.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def backbone_iqa_model(name, patch_size=224, weights=None, head_units=256, dropout=0.25):
    """A backbone from `keras.applications` with an IQA regression head.

    Args:
        name: one of `resnet50`, `mobilenetv3`, `efficientnetv2b0`.
        patch_size: input height and width (images in [0, 1]).
        weights: `None` (random), `"imagenet"` (downloaded by Keras), or the
            path of a weights file for the backbone (`.weights.h5`) or of a
            `.keras` IQA model to start from.
        head_units: width of the hidden layer of the head.
        dropout: dropout rate before the output.
    """
    if name not in BACKBONES:
        raise ValueError(f"Argument `name` must be one of {sorted(BACKBONES)}, got name={name!r}.")
    constructor, pixels = BACKBONES[name]
    backbone_weights = weights if weights in (None, "imagenet") else None
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise FileNotFoundError(f"Argument `weights`: no such file: {weights}")
    kwargs = dict(include_top=False, weights=backbone_weights, input_shape=(patch_size, patch_size, 3), pooling=None)
    if name != "resnet50":
        kwargs["include_preprocessing"] = True  # these rescale [0, 255] themselves
    backbone = constructor(**kwargs)

    inputs = keras.Input((patch_size, patch_size, 3), name="image")
    if pixels == "caffe":
        # RGB [0, 1] -> BGR [0, 255] minus the ImageNet mean: a fixed channel
        # flip plus an affine map, written as layers so the model loads in
        # safe mode (no Lambda).
        x = keras.layers.Rescaling(255.0, name="to_0_255")(inputs)
        x = ChannelReverse(name="rgb_to_bgr")(x)
        x = keras.layers.Normalization(mean=_CAFFE_MEAN_BGR, variance=(1.0, 1.0, 1.0), name="caffe_mean")(x)
    else:
        x = keras.layers.Rescaling(255.0, name="to_0_255")(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(head_units, activation="relu", name="fc1")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(1, name="quality")(x)
    model = keras.Model(inputs, outputs, name=f"{name}_iqa")
    if weights not in (None, "imagenet"):
        if str(weights).endswith(".keras"):
            source = keras.saving.load_model(weights, safe_mode=True, compile=False)
            model.set_weights(source.get_weights())
        else:
            backbone.load_weights(weights)
    return model


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class ChannelReverse(LayerContract, keras.layers.Layer):
    """Reverses the channel order (RGB <-> BGR): a permutation, Lipschitz 1, kept by `robustify`."""

    replacement = "keep"

    def lipschitz_constant(self, input_shape=None):
        return 1.0

    def call(self, inputs):
        return inputs[..., ::-1]

    def compute_output_shape(self, input_shape):
        return input_shape
