"""VLN-Ego data generation (VLN-R1 §3.2): one training sample per expert step."""
