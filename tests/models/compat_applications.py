"""The keras.applications models of the compatibility matrix, at weights=None and 32x32 patches.

ResNet50, MobileNetV3Small and EfficientNetV2B0 through `backbone_iqa_model` (the
application nested in an IQA head, as `robust-iqa train --model` builds them), VGG16 (the
paper's DBCNN backbone) nested the same way.
"""

import keras
from compat_matrix import PATCH

from keras_robust_iqa.models import backbone_iqa_model


def vgg16():
    inputs = keras.Input((PATCH, PATCH, 3), name="image")
    backbone = keras.applications.VGG16(include_top=False, weights=None, input_shape=(PATCH, PATCH, 3))
    # weights=None: no ImageNet preprocessing to match; the patches in [0, 1] go in as they are.
    x = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(inputs))
    x = keras.layers.Dense(64, activation="relu", name="fc1")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="quality")(x), name="vgg16_iqa")


APPLICATIONS = {
    "resnet50": lambda: backbone_iqa_model("resnet50", PATCH, weights=None),
    "mobilenetv3small": lambda: backbone_iqa_model("mobilenetv3", PATCH, weights=None),
    "efficientnetv2b0": lambda: backbone_iqa_model("efficientnetv2b0", PATCH, weights=None),
    "vgg16": vgg16,
}
