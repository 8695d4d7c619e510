//! Users and groups by name, looked up when the config is resolved (not after
//! fork, where the name service — which may allocate, open files or talk to
//! nscd — must not run). A name made of digits is taken as a numeric id.

use std::ffi::CString;

use nix::unistd::{getgrouplist, Gid, Group, Uid, User};

/// `(uid, primary gid)` of `name`; `Ok(None)` if no such user.
pub(crate) fn lookup_user(name: &str) -> Result<Option<(u32, u32)>, String> {
    if let Ok(uid) = name.parse::<u32>() {
        // A numeric uid need not exist in the database; its group then is the
        // same number, as for the "nogroup" convention of numeric-only setups.
        let gid = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw());
        return Ok(Some((uid, gid)));
    }
    match User::from_name(name) {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The gid of group `name`; `Ok(None)` if no such group.
pub(crate) fn lookup_group(name: &str) -> Result<Option<u32>, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(gid));
    }
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The supplementary groups of user `name` with primary group `gid`, as
/// `initgroups` would set them; `None` if they cannot be read.
pub(crate) fn user_groups(name: &str, gid: u32) -> Option<Vec<u32>> {
    let c = CString::new(name).ok()?;
    let groups = getgrouplist(&c, Gid::from_raw(gid)).ok()?;
    Some(groups.into_iter().map(Gid::as_raw).collect())
}
