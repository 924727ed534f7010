"""Anatomy data types shared by the phantoms and the pipelines (the ground layer).

:mod:`~xraycardiac.anatomy.coronary_tree` (:class:`CoronaryTree`, a coronary centreline graph in
patient RAS mm, with JSON I/O and voxelisation) and :mod:`~xraycardiac.anatomy.coronary_tree_vtk`
(its VTK polydata / ``.vtp`` I/O). Nothing here imports a phantom or a pipeline.
"""
