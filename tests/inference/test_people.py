"""Person detection, tracking and the split of the matte (service/inference/people.py), on real photos.

The matte here is the ground truth of a generated scene (portraits pasted with their own masks, the
scene builder of bench/people.py), so the splitter is judged on its own, without a matting model.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import data_path
from people_scenes import bench_people

from service.array_pool import ArrayPool
from service.errors import NoPersonAtPoint, NoPersonFound
from service.inference.people import (
    Detection,
    PeopleSelection,
    PersonDetector,
    PersonSplitter,
    Tracker,
    first_frame_people,
    keep_multiplier,
    people_found,
    without_duplicates,
)


@pytest.fixture(scope="module")
def detector() -> PersonDetector:
    return PersonDetector()


def scene(people: int = 2, frames: int = 6):  # type: ignore[no-untyped-def]
    bp = bench_people()
    return bp.make_scene(data_path("portraits", "val"), data_path("backgrounds", bp.BACKGROUND), people,
                         (320, 240), frames)


def on_grid(mask: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """A frame-sized mask at the size of the splitter's owner grid."""
    return cv2.resize(mask.astype(np.uint8), owners.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0


def test_detector_finds_two_people_in_real_photos_in_frame_pixels(detector: PersonDetector) -> None:
    images = data_path("portraits", "val", "images")
    a, b = (cv2.imread(str(images / n))[..., ::-1] for n in ("ccp-0801.jpg", "ccp-0802.jpg"))
    h = min(a.shape[0], b.shape[0])
    a, b = (cv2.resize(x, (round(x.shape[1] * h / x.shape[0]), h)) for x in (a, b))
    frame = np.ascontiguousarray(np.hstack([a, b]))
    people = detector(frame)
    assert len(people) == 2, [p.score for p in people]
    left, right = sorted(people, key=lambda p: p.box[0])
    half = a.shape[1]
    # boxes in frame pixels (the letterbox undone): one person in each photo, tall as the photo
    assert left.box[2] <= half + 20 and right.box[0] >= half - 20
    for p in people:
        assert p.box[3] - p.box[1] > 0.7 * h
        good = p.keypoints[p.keypoints[:, 2] > 0.3]
        assert len(good) >= 8
        assert (good[:, 0] >= p.box[0] - 10).all() and (good[:, 0] <= p.box[2] + 10).all()


def test_tracker_holds_identities_and_starts_new_ones() -> None:
    def det(x: float) -> Detection:
        return Detection(np.array([x, 10, x + 40, 110], np.float32), np.zeros((17, 3), np.float32), 0.5)

    tracker = Tracker()
    first = tracker.update([det(0), det(200)])
    ids = {round(float(d.box[0])): tid for tid, d in first.items()}
    for step in range(1, 6):  # both walk right, listed in the other order
        got = tracker.update([det(200 + 8 * step), det(8 * step)])
        assert {tid: round(float(d.box[0])) for tid, d in got.items()} == {ids[0]: 8 * step, ids[200]: 200 + 8 * step}
    got = tracker.update([det(40), det(240), det(500)])
    assert len(got) == 3 and max(got) not in ids.values()


def _person(x: float, score: float, *, joints: int = 17, shift: float = 0.0, tall: float = 200.0) -> Detection:
    """A standing person at ``x``: joints down the middle of the box, the first ``joints`` of them
    confident, each moved by ``shift`` pixels."""
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[:, 0] = x + 30 + shift
    keypoints[:, 1] = np.linspace(20, tall - 20, 17) + shift
    keypoints[:joints, 2] = 0.7
    return Detection(np.array([x, 0, x + 60, tall], np.float32), keypoints, score)


def test_one_person_found_twice_is_one_detection() -> None:
    """MoveNet now and then returns a person twice, the same joints at a lower score (talking-head.mp4,
    frame 48): the second is dropped.  People whose boxes overlap but whose joints differ stay."""
    twice = without_duplicates([_person(100, 0.29), _person(102, 0.21, shift=2)])
    assert [d.score for d in twice] == [0.29]
    side_by_side = without_duplicates([_person(100, 0.5), _person(150, 0.4)])
    assert len(side_by_side) == 2
    # one behind the other: boxes overlap by an IoU of ~0.8, joints 15 px apart on a 200 px person
    behind = without_duplicates([_person(100, 0.5), _person(105, 0.4, shift=15)])
    assert len(behind) == 2
    # too few joints confident in both to compare: near-identical boxes are one person, others two
    assert len(without_duplicates([_person(100, 0.5, joints=1), _person(101, 0.3, joints=1)])) == 1
    assert len(without_duplicates([_person(100, 0.5, joints=1), _person(110, 0.3, joints=1)])) == 2


def test_the_chosen_person_stays_when_the_detector_finds_them_twice(detector: PersonDetector) -> None:
    """talking-head.mp4 shows one person throughout; on frame 48 (a detector frame at the default
    ``people_detect_every``) MoveNet found them twice.  The second detection used to draw its skeleton
    over the first and take every pixel under a new track id, so ``people=largest`` dropped the person
    from there on.  Checked on a real matte: the kept alpha is the whole matte on every frame."""
    import av

    from service.inference.models import get_model

    model = get_model("rvm")
    selection = PeopleSelection(largest=True, detector=detector)
    state = model.new_state()
    with av.open(str(data_path("videos", "talking-head.mp4"))) as clip:
        for i, frame in enumerate(clip.decode(video=0)):
            image = frame.to_ndarray(format="rgb24")[None]
            if i == 48:
                assert len(detector(image[0])) == 1
            matte, state = model.predict(image, state)
            kept = selection(image, matte.alpha)
            assert kept.sum() >= 0.95 * matte.alpha.sum(), f"frame {i}: the person was dropped"
            if i == 56:
                break
    assert selection.keep == {1} and set(selection.splitter.tracker.tracks) == {1}


def test_each_matte_pixel_has_one_owner_and_a_held_object_stays_with_its_person(detector: PersonDetector) -> None:
    sc = scene(2, frames=6)
    splitter = PersonSplitter(detector, every=3)  # frames 1, 2, 4, 5 are carried by the matte alone
    for t in range(len(sc.frames)):
        alpha = (sc.masks[0, t] | sc.masks[1, t]).astype(np.float32)
        # a bag held by person 0: a block joined to its mask, far from person 1
        ys, xs = np.nonzero(sc.masks[0, t])
        row = int(np.median(ys))
        hand = int(xs[ys == row].max())
        bag = (slice(row, row + 30), slice(hand - 2, hand + 25))
        alpha[bag] = 1.0
        owners = splitter.split(sc.frames[t], alpha)
        ids = []
        for person in (0, 1):
            mine = owners[on_grid(sc.masks[person, t], owners)]
            values, counts = np.unique(mine, return_counts=True)
            ids.append(int(values[np.argmax(counts)]))
            assert ids[-1] > 0 and counts.max() / counts.sum() > 0.97
        assert ids[0] != ids[1]
        if t == 0:
            first = ids
        assert ids == first, f"identities changed on frame {t}"
        bag_mask = np.zeros_like(alpha, bool)
        bag_mask[bag] = True
        bag_owners = owners[on_grid(bag_mask & ~sc.masks[0, t], owners)]
        assert (bag_owners == ids[0]).mean() > 0.95
        assert ((owners != 0) == on_grid(alpha > 0.1, owners)).mean() > 0.99  # every matte pixel, and only those


def test_merged_people_are_split_per_pixel(detector: PersonDetector) -> None:
    sc = scene(2, frames=1)
    alpha = (sc.masks[0, 0] | sc.masks[1, 0]).astype(np.float32)
    alpha[200:215, :] = 1.0  # a band across the frame joins both people (and the ground between)
    owners = PersonSplitter(detector).split(sc.frames[0], alpha)
    a, b = owners[on_grid(sc.masks[0, 0], owners)], owners[on_grid(sc.masks[1, 0], owners)]
    ida, idb = np.bincount(a[a > 0]).argmax(), np.bincount(b[b > 0]).argmax()
    assert ida != idb and (a == ida).mean() > 0.9 and (b == idb).mean() > 0.9


def test_keep_multiplier_keeps_soft_edges_and_drops_the_others() -> None:
    owners = np.zeros((30, 40), np.int32)
    owners[5:25, 5:15] = 1
    owners[5:25, 25:35] = 2
    m = keep_multiplier(owners, {1}, (160, 120))  # 4x the grid
    assert m.shape == (120, 160) and m.dtype == np.float32
    assert (m[20:100, 20:60] == 1).all()  # the kept person
    assert (m[20:100, 14:20] == 1).all()  # its soft edge, just outside its owned pixels
    assert (m[24:96, 104:136] == 0).all()  # the other person
    assert ((m > 0) & (m < 1)).any()  # upsampled, not binarised
    both = keep_multiplier(owners, {1, 2}, (160, 120))
    assert (both[20:100, 14:66] == 1).all() and (both[20:100, 94:146] == 1).all()


def test_selection_by_point_largest_and_refusals(detector: PersonDetector) -> None:
    sc = scene(2, frames=4)
    alpha = (sc.masks[0] | sc.masks[1]).astype(np.float32)
    alpha = cv2.GaussianBlur(alpha.transpose(1, 2, 0), (5, 5), 0).transpose(2, 0, 1)  # soft edges
    for person in (0, 1):
        out = PeopleSelection([sc.start_point(person)], detector=detector, every=2)(sc.frames, alpha)
        shown = out > 0.5
        iou = (shown & sc.masks[person]).sum() / (shown | sc.masks[person]).sum()
        assert iou > 0.95
        assert (shown & sc.masks[1 - person]).sum() <= 0.01 * sc.masks[1 - person].sum()
        edge = (alpha > 0.05) & (alpha < 0.95) & sc.masks[person]
        assert np.allclose(out[edge], alpha[edge])  # the kept person's soft edge untouched
    largest = int(np.argmax(sc.masks[:, 0].sum(axis=(1, 2))))
    out = PeopleSelection(largest=True, detector=detector)(sc.frames, alpha)
    assert ((out > 0.5) & sc.masks[largest]).sum() > 0.95 * sc.masks[largest].sum()
    assert ((out > 0.5) & sc.masks[1 - largest]).sum() == 0
    with pytest.raises(NoPersonAtPoint, match="5,5"):
        PeopleSelection([(5, 5)], detector=detector)(sc.frames, alpha)
    with pytest.raises(NoPersonAtPoint, match="400,10"):
        PeopleSelection([(400, 10)], detector=detector)(sc.frames, alpha)
    with pytest.raises(NoPersonFound):
        PeopleSelection(largest=True, detector=detector)(sc.frames, np.zeros_like(alpha))


def test_each_call_gives_the_caller_an_alpha_of_its_own(detector: PersonDetector) -> None:
    """The selected alpha of one batch is still the same after the next batch's (the pipeline's
    queues hold it), whether made by ``np.empty`` or by a job's pool, and the values do not depend
    on which: the multiplier is the only array the selection keeps between calls."""
    sc = scene(2, frames=4)
    alpha = cv2.GaussianBlur((sc.masks[0] | sc.masks[1]).astype(np.float32).transpose(1, 2, 0), (5, 5), 0)
    alpha = np.ascontiguousarray(alpha.transpose(2, 0, 1))
    pool = ArrayPool(max_bytes=1 << 30)
    outputs = {}
    for name, empty in (("fresh", np.empty), ("pooled", pool.empty)):
        selection = PeopleSelection([sc.start_point(0)], detector=detector)
        first = selection(sc.frames[:2], alpha[:2], empty)
        kept = first.copy()
        second = selection(sc.frames[2:], alpha[2:], empty)
        assert np.array_equal(first, kept), name
        assert not np.shares_memory(first, second), name
        outputs[name] = np.concatenate([first, second])
    assert np.array_equal(outputs["fresh"], outputs["pooled"])
    assert (outputs["fresh"] < alpha).any()  # the other person was taken out


def test_people_found_on_the_first_frame_give_points_that_select_them(detector: PersonDetector) -> None:
    sc = scene(2, frames=1)
    alpha = (sc.masks[0, 0] | sc.masks[1, 0]).astype(np.float32)
    splitter = PersonSplitter(detector)
    found = people_found(splitter, splitter.split(sc.frames[0], alpha), (sc.frames[0].shape[1], sc.frames[0].shape[0]))
    assert len(found) == 2
    largest = int(np.argmax(sc.masks[:, 0].sum(axis=(1, 2))))
    for rank, p in enumerate(found):
        x, y = p.point
        person = int(np.argmax(sc.masks[:, 0, y, x]))
        assert sc.masks[person, 0, y, x]  # the point is inside a person...
        assert (person == largest) == (rank == 0)  # ...listed largest first
        ys, xs = np.nonzero(sc.masks[person, 0])
        x0, y0, x1, y1 = p.box
        assert abs(x0 - xs.min()) < 20 and abs(x1 - xs.max()) < 20 and abs(y0 - ys.min()) < 30
        h, w = sc.frames[0].shape[:2]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, p.box  # within the frame, as the detector's may not be
        # sent back as a keep point, it keeps that person
        out = PeopleSelection([p.point], detector=detector)(sc.frames, alpha[None])
        assert ((out[0] > 0.5) == sc.masks[person, 0]).mean() > 0.99
    assert [p.id for p in first_frame_people(sc.frames[0], alpha)] == [p.id for p in found]


def test_matte_touching_nobody_goes_to_a_near_person_or_to_nobody(detector: PersonDetector) -> None:
    sc = scene(2, frames=1)
    alpha = (sc.masks[0, 0] | sc.masks[1, 0]).astype(np.float32)
    ys, xs = np.nonzero(sc.masks[0, 0])
    row = int(np.median(ys))
    near = (slice(row, row + 10), slice(int(xs[ys == row].max()) + 4, int(xs[ys == row].max()) + 12))
    far = (slice(2, 12), slice(150, 170))  # top middle, far from both heads
    assert not alpha[near].any() and not alpha[far].any()
    alpha[near] = 1.0  # a hand the threshold cut off, a few pixels away
    alpha[far] = 1.0  # something the matting model mistook for a person
    splitter = PersonSplitter(detector)
    owners = splitter.split(sc.frames[0], alpha)
    person0 = np.bincount(owners[on_grid(sc.masks[0, 0], owners)].clip(0)).argmax()
    mask = np.zeros(alpha.shape, bool)
    mask[near] = True
    assert (owners[on_grid(mask, owners)] == person0).all()
    mask[:] = False
    mask[far] = True
    assert (owners[on_grid(mask, owners)] == -1).all()
    out = PeopleSelection([sc.start_point(0)], detector=detector)(sc.frames, alpha[None])
    assert out[0][far].max() == 0 and out[0][near].min() == 1
