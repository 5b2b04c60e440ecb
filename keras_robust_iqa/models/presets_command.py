"""`robust-iqa presets`: the presets shipped with the package, and what each card says."""

import json
import sys


def add_parser(subparsers):
    p = subparsers.add_parser(
        "presets",
        help="list the bundled presets (trained certified models) and their cards",
        description="List the presets shipped with the package: name, test SROCC / PLCC, certified "
        "per-patch Lipschitz bound, I-FGSM 4/255 gain, patch size and MOS scale, what each was trained on "
        "and what it is not for, and the command that rebuilds it. Load one with "
        "`keras_robust_iqa.models.from_preset(NAME)`; `robust-iqa score --preset NAME` scores with it.",
    )
    p.add_argument("--format", default="table", choices=("table", "json"),
                   help="table (default) or json (the whole model cards)")
    p.set_defaults(func=run)


def run(args):
    from keras_robust_iqa.models.presets import DEFAULT_PRESET, list_presets

    cards = list_presets()
    if args.format == "json":
        sys.stdout.write(json.dumps(cards, indent=2) + "\n")
        return 0
    for name, card in cards.items():
        attack = card["ifgsm_4_255"]
        lo, hi = card["mos_range"]
        print(f"{name}{' (default of robust-iqa score)' if name == DEFAULT_PRESET else ''}")
        print(f"  {card['description']}")
        print(f"  test SROCC {card['test']['srocc']:.3f}, PLCC {card['test']['plcc']:.3f} "
              f"({card['test']['images']} images); certified per-patch Lipschitz bound {card['lipschitz_bound']:.4f}; "
              f"I-FGSM 4/255 gain {attack['gain_mos01']:.3f} on the [0, 1] MOS scale ({attack['images']} images)")
        print(f"  patch {card['patch_size']}x{card['patch_size']}, MOS scale {lo:g}..{hi:g}, "
              f"{card['parameter_count']:,} parameters")
        print(f"  trained on: {card['training_data']}")
        print(f"  not for: {card['not_for']}")
        print(f"  rebuild: {card['recipe_command']}")
    return 0
