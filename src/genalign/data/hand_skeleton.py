"""The 21-joint hand skeleton of DexYCB: joint names, fingers, parents and bones.

The order is MANO's as the DexYCB toolkit writes it (NVlabs/dex-ycb-toolkit,
`dex_ycb_toolkit/dex_ycb.py`: `_MANO_JOINTS` and `_MANO_JOINT_CONNECT`): 0 the wrist,
then four joints per finger from the palm outwards, thumb, index, middle, ring, little:

    0 wrist
    1-4   thumb   MCP PIP DIP TIP      (MANO's thumb1-3 and the tip; anatomically CMC, MCP, IP)
    5-8   index   MCP PIP DIP TIP
    9-12  middle  MCP PIP DIP TIP
    13-16 ring    MCP PIP DIP TIP
    17-20 little  MCP PIP DIP TIP

Every finger's MCP hangs from the wrist, each next joint from the one before it, so the
20 bones are the toolkit's `_MANO_JOINT_CONNECT` pairs, in its order.

    >>> from genalign.data.hand_skeleton import BONES, FINGERS, JOINT_NAMES
    >>> JOINT_NAMES[FINGERS["index"][-1]]
    'index_tip'

No torch: the constants are plain tuples.
"""

from __future__ import annotations

ROOT = 0  # the wrist: root-relative joints subtract joint 0

# The toolkit's finger order; each finger's joints are consecutive from 1 + 4 * position.
FINGER_NAMES: tuple[str, ...] = ("thumb", "index", "middle", "ring", "little")
_JOINT_KINDS = ("mcp", "pip", "dip", "tip")

JOINT_NAMES: tuple[str, ...] = ("wrist",) + tuple(
    f"{finger}_{kind}" for finger in FINGER_NAMES for kind in _JOINT_KINDS
)

FINGERS: dict[str, tuple[int, int, int, int]] = {
    finger: tuple(1 + 4 * i + k for k in range(4)) for i, finger in enumerate(FINGER_NAMES)
}

PARENTS: tuple[int, ...] = (-1,) + tuple(
    ROOT if k == 0 else 1 + 4 * i + k - 1 for i in range(len(FINGER_NAMES)) for k in range(4)
)

BONES: tuple[tuple[int, int], ...] = tuple(
    (PARENTS[child], child) for finger in FINGER_NAMES for child in FINGERS[finger]
)

NUM_JOINTS = len(JOINT_NAMES)  # 21
