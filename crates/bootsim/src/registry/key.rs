//! [`RegKey`]: one key, its values and its subkeys.

use std::collections::BTreeMap;

use super::RegValue;

/// Folds a key or value name for comparison. The configuration manager
/// compares names case-insensitively (upcased UTF-16); lowercasing every
/// character is equivalent for the names a SYSTEM hive holds.
fn fold(name: &str) -> String {
    name.to_lowercase()
}

/// One registry key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegKey {
    name: String,
    /// Folded name -> subkey.
    subkeys: BTreeMap<String, RegKey>,
    /// Folded name -> (name as written, data). The default value has the
    /// empty name.
    values: BTreeMap<String, (String, RegValue)>,
}

impl RegKey {
    /// A key with no values and no subkeys.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// The key's own name as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subkey at `path` (backslash-separated, relative, case-insensitive);
    /// an empty path is this key.
    pub fn key(&self, path: &str) -> Option<&RegKey> {
        let mut key = self;
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            key = key.subkeys.get(&fold(part))?;
        }
        Some(key)
    }

    /// The subkey at `path`, created (with every missing parent) if absent.
    pub fn key_mut_or_create(&mut self, path: &str) -> &mut RegKey {
        let mut key = self;
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            key = key
                .subkeys
                .entry(fold(part))
                .or_insert_with(|| RegKey::new(part));
        }
        key
    }

    /// The subkey at `path`, if present, for modification.
    pub fn key_mut(&mut self, path: &str) -> Option<&mut RegKey> {
        let mut key = self;
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            key = key.subkeys.get_mut(&fold(part))?;
        }
        Some(key)
    }

    /// Removes the subkey at `path` with everything under it; returns it.
    pub fn remove_key(&mut self, path: &str) -> Option<RegKey> {
        let (parent, last) = match path.trim_matches('\\').rsplit_once('\\') {
            Some((parent, last)) => (self.key_mut(parent)?, last),
            None => (self, path.trim_matches('\\')),
        };
        parent.subkeys.remove(&fold(last))
    }

    /// Direct subkeys, in case-insensitive name order.
    pub fn subkeys(&self) -> impl Iterator<Item = &RegKey> {
        self.subkeys.values()
    }

    /// The value called `name` (empty for the default value).
    pub fn value(&self, name: &str) -> Option<&RegValue> {
        self.values.get(&fold(name)).map(|(_, v)| v)
    }

    /// Every value as (name as written, data), in case-insensitive name order.
    pub fn values(&self) -> impl Iterator<Item = (&str, &RegValue)> {
        self.values.values().map(|(n, v)| (n.as_str(), v))
    }

    /// Sets (or replaces) a value.
    pub fn set_value(&mut self, name: impl Into<String>, value: RegValue) {
        let name = name.into();
        self.values.insert(fold(&name), (name, value));
    }

    /// Removes a value; returns it.
    pub fn remove_value(&mut self, name: &str) -> Option<RegValue> {
        self.values.remove(&fold(name)).map(|(_, v)| v)
    }

    /// Adds `key` as a direct subkey (replacing one with the same name, in
    /// any case); returns it for further filling.
    pub fn add_subkey(&mut self, key: RegKey) -> &mut RegKey {
        let folded = fold(&key.name);
        self.subkeys.insert(folded.clone(), key);
        self.subkeys
            .get_mut(&folded)
            .expect("the subkey was inserted just above")
    }

    /// Removes every value and subkey (the name stays).
    pub fn clear(&mut self) {
        self.subkeys.clear();
        self.values.clear();
    }

    /// Number of keys in this tree, this key included.
    pub fn tree_key_count(&self) -> usize {
        1 + self.subkeys().map(RegKey::tree_key_count).sum::<usize>()
    }

    /// Shorthand: a DWORD value.
    pub fn dword(&self, name: &str) -> Option<u32> {
        self.value(name)?.as_dword()
    }

    /// Shorthand: a string value (`REG_SZ`/`REG_EXPAND_SZ`).
    pub fn string(&self, name: &str) -> Option<&str> {
        self.value(name)?.as_str()
    }

    /// Shorthand: a string-list value (`REG_MULTI_SZ`, or one string).
    pub fn strings(&self, name: &str) -> Option<Vec<&str>> {
        self.value(name)?.as_strings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_case_insensitive_and_keep_spelling() {
        let mut root = RegKey::new("ControlSet001");
        root.key_mut_or_create(r"Services\vmci")
            .set_value("Start", RegValue::Dword(0));
        let vmci = root
            .key(r"SERVICES\VMCI")
            .expect("found regardless of case");
        assert_eq!(vmci.name(), "vmci");
        assert_eq!(vmci.dword("start"), Some(0));
        assert!(root.key(r"Services\vsock").is_none());
        assert!(root.remove_key(r"services\VMCI").is_some());
        assert!(root.key(r"Services\vmci").is_none());
        assert!(root.key("Services").is_some());
    }

    #[test]
    fn string_lists_accept_a_single_string() {
        let mut k = RegKey::new("x");
        k.set_value("DependOnService", RegValue::Sz("FltMgr".into()));
        k.set_value(
            "UpperFilters",
            RegValue::MultiSz(vec!["a".into(), "b".into()]),
        );
        assert_eq!(k.strings("DependOnService"), Some(vec!["FltMgr"]));
        assert_eq!(k.strings("upperfilters"), Some(vec!["a", "b"]));
        assert_eq!(k.values().count(), 2);
    }
}
