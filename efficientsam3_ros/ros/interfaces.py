"""The package's ROS 2 interface definitions, embedded as text.

GENERATED from msg/*.msg and srv/*.srv by ``python -m efficientsam3_ros.ros._interface_gen``;
do not edit by hand (test_ros_interfaces.py checks it matches the files).
"""


MSG_DEFINITIONS: dict[str, str] = {
    'ConceptInstance': '# One segmented instance of one text concept in one image.\n#\n# The mask is COCO run-length encoding (RLE), the compressed "counts" string that\n# pycocotools.mask.encode produces and pycocotools.mask.decode reads, over the\n# full image (mask_height x mask_width, equal to the parent array\'s height x width).\n# It is lossless, a few hundred bytes for a typical object, and decodable without\n# this package (see the README, "Reading the masks").\n\n# Track states; the values match efficientsam3_ros.pipeline.results.TrackState.\nuint8 STATE_UNTRACKED=0  # single-image inference: no tracker ran, track_id is -1\nuint8 STATE_NEW=1        # first frame of a new track\nuint8 STATE_TRACKED=2    # matched to a detection in this frame\nuint8 STATE_PREDICTED=3  # not detected in this frame; mask propagated from the tracker\'s memory\n\nint32 concept_id         # id of the concept (see ConceptInstanceArray.concept_ids)\nstring label             # the concept\'s text phrase, e.g. "red mug"\nint64 track_id           # stable id while the object is tracked; -1 when no tracker ran\nuint8 state              # one of STATE_*\nfloat32 score            # confidence in [0, 1]\n\n# Axis-aligned bounding box in pixels of the input image: x_min, y_min, x_max, y_max.\nfloat32[4] box_xyxy\n\n# Mask as COCO RLE (column-major runs, pycocotools\' compressed string form).\nuint32 mask_height\nuint32 mask_width\nstring mask_rle\n',
    'ConceptInstanceArray': '# Everything the concept segmenter found in one camera image.\n\n# stamp and frame_id copied from the input image, so results line up with it.\nstd_msgs/Header header\n\n# Size of the input image in pixels; every mask covers exactly this size.\nuint32 height\nuint32 width\n\n# The concepts that were active for this image, as parallel arrays (id -> label).\nint32[] concept_ids\nstring[] concept_labels\n\nConceptInstance[] instances\n\n# Time the model took for this image (preprocessing to postprocessing), milliseconds.\nfloat32 inference_time_ms\n',
}

SRV_DEFINITIONS: dict[str, str] = {
    'AddExemplar': '# Refine a concept with visual exemplars: boxes drawn on the latest processed frame\n# of one camera, positive (more like this) or negative (not this).\nstring camera          # camera name (output namespace); empty selects the only camera\nint32 concept_id\nfloat32[] boxes_xyxy   # flat, 4 values per box: x_min, y_min, x_max, y_max in pixels\nbool[] positive        # one per box\n---\nbool success\nstring message\n',
    'ListConcepts': '# List the active concepts as parallel arrays (id -> label).\n---\nbool success\nstring message\nint32[] concept_ids\nstring[] labels\n',
    'RemoveConcepts': '# Remove concepts by id; their tracks end.\nint32[] concept_ids\n---\nbool success\nstring message\n',
    'ResetTracking': "# Forget every track (ids restart from the tracker's next id); concepts stay.\nstring camera   # camera name (output namespace); empty resets every camera\n---\nbool success\nstring message\n",
    'SetConcepts': '# Set the text concepts to segment, e.g. ["person", "red mug"].\n# Each phrase must be non-empty and at most max_phrase_length characters; the\n# total number of concepts is limited by the max_concepts parameter.\nstring[] labels\nbool append     # false: replace every current concept; true: add to them\n---\nbool success\nstring message  # why it failed, or a short summary\nint32[] concept_ids  # ids of the given labels, in the same order (empty on failure)\n',
}
