//! Reading /proc/PID/cgroup: `hierarchy-id:controllers:path` per line, one
//! line `0::/path` on cgroup v2, one line per hierarchy on v1.

/// One hierarchy's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Line<'a> {
    /// Empty on the v2 line.
    pub controllers: &'a str,
    pub path: &'a str,
}

impl<'a> Line<'a> {
    /// The unified (v2) hierarchy.
    pub fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }

    /// The v1 hierarchy systemd keeps its units in.
    pub fn is_v1_systemd(&self) -> bool {
        self.controllers == "name=systemd"
    }

    /// Path components, root first.
    pub fn components(self) -> impl DoubleEndedIterator<Item = &'a str> {
        self.path.split('/').filter(|c| !c.is_empty())
    }
}

/// All well-formed lines of a cgroup file; the path may itself hold ':'.
pub(super) fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.lines().filter_map(|l| {
        let mut parts = l.splitn(3, ':');
        let _hierarchy = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        path.starts_with('/').then_some(Line { controllers, path })
    })
}

/// The uid of a systemd user manager (`user@UID.service`) component. Its
/// subtree is delegated to that user, who may create cgroups there with any
/// names, so names found below it are only that user's claims.
pub(super) fn user_manager_uid(component: &str) -> Option<u32> {
    component
        .strip_prefix("user@")?
        .strip_suffix(".service")?
        .parse()
        .ok()
}

/// The uid of the innermost user manager among `components`, if any.
pub(super) fn delegated_to<'a>(components: impl Iterator<Item = &'a str>) -> Option<u32> {
    components.filter_map(user_manager_uid).last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_into_controllers_and_path() {
        let text = "12:memory:/docker/abc\n0::/system.slice/a:b.service\nbogus\n";
        let got: Vec<_> = lines(text).collect();
        assert_eq!(
            got,
            vec![
                Line {
                    controllers: "memory",
                    path: "/docker/abc"
                },
                Line {
                    controllers: "",
                    path: "/system.slice/a:b.service"
                },
            ]
        );
        assert!(got[1].is_v2() && !got[0].is_v2());
    }

    #[test]
    fn user_managers_are_recognised() {
        assert_eq!(user_manager_uid("user@1000.service"), Some(1000));
        assert_eq!(user_manager_uid("user@.service"), None);
        assert_eq!(user_manager_uid("user-1000.slice"), None);
        let path = "/user.slice/user-1000.slice/user@1000.service/app.slice";
        assert_eq!(delegated_to(path.split('/')), Some(1000));
        assert_eq!(delegated_to("/system.slice/x.service".split('/')), None);
    }
}
