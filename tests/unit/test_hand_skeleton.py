"""The 21-joint DexYCB skeleton: the toolkit's joint order and bones, parents consistent
with bones and fingers."""

from genalign.data.hand_skeleton import (
    BONES,
    FINGER_NAMES,
    FINGERS,
    JOINT_NAMES,
    NUM_JOINTS,
    PARENTS,
    ROOT,
)

# NVlabs/dex-ycb-toolkit dex_ycb_toolkit/dex_ycb.py, _MANO_JOINTS and _MANO_JOINT_CONNECT.
TOOLKIT_JOINTS = [
    "wrist",
    "thumb_mcp", "thumb_pip", "thumb_dip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "little_mcp", "little_pip", "little_dip", "little_tip",
]  # fmt: skip
TOOLKIT_CONNECT = [
    [0, 1], [1, 2], [2, 3], [3, 4],
    [0, 5], [5, 6], [6, 7], [7, 8],
    [0, 9], [9, 10], [10, 11], [11, 12],
    [0, 13], [13, 14], [14, 15], [15, 16],
    [0, 17], [17, 18], [18, 19], [19, 20],
]  # fmt: skip


def test_joint_names_are_the_toolkits_order():
    assert NUM_JOINTS == 21
    assert list(JOINT_NAMES) == TOOLKIT_JOINTS
    assert JOINT_NAMES[ROOT] == "wrist"


def test_bones_are_the_toolkits_connections():
    assert [list(b) for b in BONES] == TOOLKIT_CONNECT


def test_parents_agree_with_bones_and_fingers():
    assert PARENTS[ROOT] == -1
    assert len(PARENTS) == NUM_JOINTS
    assert {(PARENTS[child], child) for child in range(1, NUM_JOINTS)} == set(BONES)
    assert list(FINGERS) == list(FINGER_NAMES) == ["thumb", "index", "middle", "ring", "little"]
    covered = []
    for finger, joints in FINGERS.items():
        assert len(joints) == 4
        assert [JOINT_NAMES[j] for j in joints] == [
            f"{finger}_{k}" for k in ("mcp", "pip", "dip", "tip")
        ]
        assert PARENTS[joints[0]] == ROOT  # every MCP hangs from the wrist
        assert [PARENTS[j] for j in joints[1:]] == list(joints[:-1])
        covered += joints
    assert sorted(covered) == list(range(1, NUM_JOINTS))
    # each parent comes before its child, so one forward pass builds a skeleton
    assert all(PARENTS[j] < j for j in range(1, NUM_JOINTS))
