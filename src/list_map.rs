//! [`ListMap`]: a map by string key kept as a list, for the per-connection
//! tables that hold one or two entries (a socket's namespaces,
//! subscriptions and recovery log). A hash map's smallest table has room for three and
//! cost a few hundred bytes for one; across thousands of idle sockets
//! that was a large share of their memory. Lookups search the list, so
//! use it only where a limit keeps it short.

use std::borrow::Borrow;

/// Entries by key (`String`, or `Arc<str>` to share the name), in no
/// particular order.
#[derive(Debug)]
pub struct ListMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for ListMap<K, V> {
    fn default() -> Self {
        ListMap(Vec::new())
    }
}

impl<K: Borrow<str>, V> ListMap<K, V> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.0
            .iter()
            .find(|(held, _)| held.borrow() == key)
            .map(|(_, value)| value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.0
            .iter_mut()
            .find(|(held, _)| held.borrow() == key)
            .map(|(_, value)| value)
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(held) = self.get_mut(key.borrow()) {
            return Some(std::mem::replace(held, value));
        }
        if self.0.capacity() == 0 {
            // Room for exactly the first: most never get a second.
            self.0.reserve_exact(1);
        }
        self.0.push((key, value));
        None
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let index = self.0.iter().position(|(held, _)| held.borrow() == key)?;
        let (_, value) = self.0.swap_remove(index);
        if self.0.is_empty() {
            // An emptied list keeps no memory.
            self.0 = Vec::new();
        }
        Some(value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(key, value)| (key, value))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.0.iter_mut().map(|(_, value)| value)
    }

    /// Takes every entry, leaving the map empty.
    pub fn drain(&mut self) -> impl Iterator<Item = (K, V)> {
        std::mem::take(&mut self.0).into_iter()
    }
}

impl<K: Borrow<str>, V> FromIterator<(K, V)> for ListMap<K, V> {
    /// Keys are taken as distinct (collect from a map).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut list: Vec<(K, V)> = entries.into_iter().collect();
        list.shrink_to_fit();
        ListMap(list)
    }
}

#[cfg(test)]
mod tests {
    use super::ListMap;

    #[test]
    fn behaves_as_a_map() {
        let mut map: ListMap<String, i32> = ListMap::default();
        assert!(map.is_empty());
        assert_eq!(map.insert("a".to_owned(), 1), None);
        assert_eq!(map.insert("b".to_owned(), 2), None);
        assert_eq!(map.insert("a".to_owned(), 3), Some(1));
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("a"), Some(&3));
        *map.get_mut("b").unwrap() += 10;
        assert!(map.contains_key("b"));
        assert_eq!(map.remove("a"), Some(3));
        assert_eq!(map.remove("a"), None);
        assert_eq!(map.iter().collect::<Vec<_>>(), [(&"b".to_owned(), &12)]);
        assert_eq!(map.drain().collect::<Vec<_>>(), [("b".to_owned(), 12)]);
        assert!(map.is_empty());
    }

    #[test]
    fn one_entry_takes_room_for_one() {
        let mut map: ListMap<std::sync::Arc<str>, u64> = ListMap::default();
        map.insert("only".into(), 0);
        assert_eq!(map.0.capacity(), 1);
        map.remove("only");
        assert_eq!(map.0.capacity(), 0);
    }
}
