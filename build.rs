//! Build script of the driver package.
//!
//! On Windows hosts it hands the build to `wdk-build`, which finds the WDK,
//! generates the linker arguments for a kernel-mode driver and checks the
//! configuration in `[package.metadata.wdk]`. `wdk-build` refuses to run on any
//! other host, so elsewhere this does nothing and the package builds as an
//! ordinary (empty) library.

#[cfg(windows)]
fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}

#[cfg(not(windows))]
fn main() {}
