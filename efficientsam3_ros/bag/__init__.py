"""Offline rosbag2 evaluation (``efficientsam3 eval-bag``), built on rosbags: no ROS install needed.

Modules, one job each: ``source`` reads bags (both storages, every metadata version rosbags
reads), ``sink`` writes the results bag, ``ground_truth`` reads a ConceptInstanceArray topic
as ground truth, ``run`` is the loop that ties them to the pipeline and the report, ``cli``
is the command line. Metrics and the report live in :mod:`efficientsam3_ros.evaluation`.
"""
