//! Vector indexes over sealed segments. The exact scan in [`crate::segment`] is the reference;
//! an index returns candidates that the caller re-ranks exactly from the segment's vectors.
pub mod audit;
pub mod calibrate;
pub mod coarse;
pub mod fastscan;
pub mod ivf;
pub mod kmeans;
pub mod pq;
