"""Instance catalog, fleet planning and ParallelCluster configs."""
