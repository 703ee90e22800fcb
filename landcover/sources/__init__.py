"""Reading what users have: Sentinel-2 products (SAFE, band folders, GeoTIFFs, BigEarthNet) and CORINE labels."""
