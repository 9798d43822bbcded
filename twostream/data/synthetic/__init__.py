"""Synthetic scenes in the exact ADEChallengeData2016 layout, so that every test exercises the real reader.

Eight scene types named after ADE20K scenes: bedroom, kitchen, bathroom, living_room, dining_room, office, street,
highway. Each has its own distribution of ADE20K-150 objects (real class ids from ``ade20k150()``) and spatial rules:
the floor lies below the furniture and every piece of furniture stands on it, the sky is above the buildings, a lamp
stands on the chest of drawers beside the bed, chairs touch the dining table, pillows lie on the bed, a mirror hangs
above the bathroom sink, cars drive on the road. Objects are drawn as textured shapes (cv2 and array slicing into a
label map), then coloured with a class-typical colour, a per-object colour jitter, a class texture (planks, tiles,
window grids, stripes, grain), low-frequency shading, a slight blur and pixel noise, all vectorised.

The package: :mod:`.canvas` (the drawing surface), :mod:`.scenes` (the eight recipes, :data:`SCENES`),
:mod:`.relation` (the relation-only layouts), :mod:`.paint` (colours and textures), :mod:`.render` (one image),
:mod:`.writer` (a dataset).

Relation-only images. A fraction of the ``living_room`` and ``dining_room`` images (``relation_fraction``, spread
evenly) are drawn by one shared layout with exactly the same objects: wall, ceiling, floor, painting, table, chair
and sofa, placed in a row on the floor as ``[toucher][table] gap [other]`` (or mirrored). In a dining room the chair
touches the table and the sofa stands apart; in a living room the sofa touches the table and the chair stands apart.
Sizes, heights, gap, start position, mirroring and colours come from the same random draws, so for one seed the two
variants have identical class sets and identical per-class pixel counts: only which objects touch which differs
(``render_relation_pair`` draws both). Object presence alone cannot tell these images apart; adjacency can. With
``relation_layout="irregular"`` the furniture is concave and the boxes of all three objects overlap whether or not
they touch, so the objects' geometry cannot tell them apart either; ``degree_matched`` and
``irregular_degree_matched`` add a shelf that the object apart from the table touches, so every object has the same
number of contacts in both scenes and the numbers of contacts cannot tell them apart (:mod:`.relation`).

Output (``make_synthetic``)::

    out/images/{training,validation}/ADE_{train,val}_########.jpg   JPEG, quality 90
    out/annotations/{training,validation}/*.png                     uint8, 0 = other, 1..150
    out/annotations_instance/{split}/*.png                          with instances=True: RGB, R = class, G = index
    out/sceneCategories.txt                                         both splits
    out/synthetic.json                                              parameters and the relation-only image names

Scenes are assigned round-robin over the file index (image 1 is the first scene, image 2 the second, ...), so the
first N files of a split (``data.max_items``) cover every scene. Every image has its own generator seeded from
``(seed, split, index)``: output bytes depend only on the parameters, not on ``workers``.
"""

from twostream.data.io import read_instances
from twostream.data.synthetic.relation import RELATION_CONTACTS, RELATION_LAYOUTS, RELATION_SCENES
from twostream.data.synthetic.render import render_relation_pair, render_scene
from twostream.data.synthetic.scenes import SCENES
from twostream.data.synthetic.writer import make_synthetic

__all__ = [
    "RELATION_CONTACTS",
    "RELATION_LAYOUTS",
    "RELATION_SCENES",
    "SCENES",
    "make_synthetic",
    "read_instances",
    "render_relation_pair",
    "render_scene",
]
