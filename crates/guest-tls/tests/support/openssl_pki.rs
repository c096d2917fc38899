//! A test PKI made with the OpenSSL commands docs/operations.md gives: a
//! guest CA, a rogue CA nobody configures, the scanner's certificate for
//! 127.0.0.1 and guest certificates. Shared by the `tls://` tests of
//! `thinagent-diag` and `thinagent-linux-agent`; include it with
//! `#[path = "../../guest-tls/tests/support/openssl_pki.rs"] mod openssl_pki;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Certificates in a directory: `NAME.crt` and `NAME.key` for `guest-ca`,
/// `rogue-ca`, `scanner` and every [`guest`](Pki::guest).
pub struct Pki {
    dir: PathBuf,
}

/// Whether `openssl` runs here; `false` fails under `CI=true` (CI
/// installs it) and prints why a test is skipped otherwise.
pub fn available() -> bool {
    if Command::new("openssl").arg("version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "openssl is missing (.ci/run installs it)"
    );
    eprintln!("SKIPPED: openssl is not installed");
    false
}

impl Pki {
    /// Makes both CAs and the scanner's certificate in `dir`.
    pub fn new(dir: &Path) -> Self {
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        for (name, cn) in [
            ("guest-ca", "/CN=ThinAgent guest CA"),
            ("rogue-ca", "/CN=Rogue CA"),
        ] {
            pki.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-subj",
                cn,
            ]);
        }
        pki.signed(
            "scanner",
            "/CN=thinagent-scanner",
            "guest-ca",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        pki
    }

    /// A guest certificate `NAME.crt`/`NAME.key` for subject `subject`
    /// (`/CN=vm-17`), signed by `ca` (`guest-ca` or `rogue-ca`).
    pub fn guest(&self, name: &str, subject: &str, ca: &str) {
        self.signed(name, subject, ca, "extendedKeyUsage=clientAuth\n");
    }

    /// Revokes `NAME.crt` at `ca` and writes the CA's revocation list
    /// `CA.crl`, with the `openssl ca` commands docs/operations.md gives
    /// (its `ca.cnf`, index and CRL number made on first use).
    pub fn revoke(&self, name: &str, ca: &str) {
        if !self.path("ca.cnf").exists() {
            std::fs::write(
                self.path("ca.cnf"),
                "[ca]\ndefault_ca = guest_ca\n[guest_ca]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 30\n",
            )
            .unwrap();
            std::fs::write(self.path("index.txt"), "").unwrap();
            std::fs::write(self.path("crlnumber"), "1000\n").unwrap();
        }
        let (key, cert) = (format!("{ca}.key"), format!("{ca}.crt"));
        let revoked = format!("{name}.crt");
        let list = format!("{ca}.crl");
        for args in [
            vec!["-revoke", revoked.as_str()],
            vec!["-gencrl", "-out", list.as_str()],
        ] {
            let mut all = vec!["ca", "-config", "ca.cnf"];
            all.extend(args);
            all.extend(["-keyfile", key.as_str(), "-cert", cert.as_str()]);
            self.openssl(&all);
        }
    }

    /// `NAME` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The same as a string, for command lines.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    fn signed(&self, name: &str, subject: &str, ca: &str, ext: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ]);
        std::fs::write(self.path(&format!("{name}.ext")), ext).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
