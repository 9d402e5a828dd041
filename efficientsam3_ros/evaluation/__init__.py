"""evaluation layer of efficientsam3_ros (see DESIGN.md)."""
