"""What people read: results.json and candidates.csv."""
