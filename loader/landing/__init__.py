"""The raw layer: spooling parsed files and the dlt COPY into raw datasets."""
