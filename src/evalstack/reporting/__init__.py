"""What people read: figures, the report, comparison and robustness reports, the offline plots page."""
