//! A tiny, bounded XML element tree for recording metadata.
//!
//! In: the metadata bytes. Out: a [`Tree`] of elements with local names
//! (prefixes dropped), attributes and text, and lookups that compare names
//! ASCII case-insensitively. Promises: never panics; a DOCTYPE is refused
//! (no entity is ever expanded, only the five predefined entities and
//! character references are decoded); depth over [`super::MAX_DEPTH`] or
//! more than [`super::MAX_ELEMENTS`] elements is refused.

use super::*;

pub(super) struct Element {
    /// Local name as written (prefix dropped).
    pub(super) name: String,
    /// Attributes by local name.
    pub(super) attrs: Vec<(String, String)>,
    /// Concatenated character data directly inside the element.
    pub(super) text: String,
    pub(super) children: Vec<usize>,
}

pub(super) struct Tree {
    pub(super) elements: Vec<Element>,
}

impl Tree {
    pub(super) fn get(&self, idx: usize) -> Option<&Element> {
        self.elements.get(idx)
    }

    pub(super) fn children(&self, idx: usize) -> impl Iterator<Item = (usize, &Element)> + '_ {
        self.get(idx)
            .map(|e| e.children.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(move |c| self.get(*c).map(|e| (*c, e)))
    }

    /// Direct children with that local name.
    pub(super) fn named<'a>(
        &'a self,
        idx: usize,
        name: &'a str,
    ) -> impl Iterator<Item = (usize, &'a Element)> + 'a {
        self.children(idx)
            .filter(move |(_, e)| e.name.eq_ignore_ascii_case(name))
    }

    pub(super) fn first(&self, idx: usize, name: &str) -> Option<(usize, &Element)> {
        self.children(idx)
            .find(|(_, e)| e.name.eq_ignore_ascii_case(name))
    }

    /// Trimmed text of the first direct child with that name; `None` when
    /// absent or blank.
    pub(super) fn child_text(&self, idx: usize, name: &str) -> Option<String> {
        self.first(idx, name).and_then(|(_, e)| non_empty(&e.text))
    }

    /// First element with that name anywhere below `idx` (depth first).
    pub(super) fn descendant(&self, idx: usize, name: &str) -> Option<usize> {
        let mut stack: Vec<usize> = vec![idx];
        while let Some(i) = stack.pop() {
            let Some(e) = self.get(i) else { continue };
            if i != idx && e.name.eq_ignore_ascii_case(name) {
                return Some(i);
            }
            stack.extend(e.children.iter().rev());
        }
        None
    }
}

impl Element {
    /// First attribute whose local name is one of `names`, trimmed, non-empty.
    pub(super) fn attr(&self, names: &[&str]) -> Option<String> {
        names.iter().find_map(|n| {
            self.attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .and_then(|(_, v)| non_empty(v))
        })
    }
}

pub(super) fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

pub(super) fn local(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

pub(super) fn xml_err(e: impl std::fmt::Display) -> SiprecError {
    SiprecError::Xml(e.to_string())
}

pub(super) fn build_tree(xml: &[u8]) -> Result<Tree, SiprecError> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().check_end_names = true;
    let mut elements: Vec<Element> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut root_done = false;
    loop {
        let event = reader.read_event().map_err(xml_err)?;
        let (start, empty) = match &event {
            Event::Start(s) => (Some(s), false),
            Event::Empty(s) => (Some(s), true),
            _ => (None, false),
        };
        if let Some(s) = start {
            if root_done && stack.is_empty() {
                // A second root element: not XML; keep the first document.
                if empty {
                    continue;
                }
                break;
            }
            if elements.len() >= MAX_ELEMENTS {
                return Err(SiprecError::TooManyElements);
            }
            if stack.len() >= MAX_DEPTH {
                return Err(SiprecError::TooDeep);
            }
            let mut attrs = Vec::new();
            for a in s.attributes() {
                let a = a.map_err(xml_err)?;
                let value = a
                    .normalized_value(XmlVersion::Implicit1_0)
                    .map_err(xml_err)?;
                attrs.push((local(a.key.local_name().as_ref()), value.into_owned()));
            }
            let idx = elements.len();
            elements.push(Element {
                name: local(s.local_name().as_ref()),
                attrs,
                text: String::new(),
                children: Vec::new(),
            });
            if let Some(parent) = stack.last().and_then(|p| elements.get_mut(*p)) {
                parent.children.push(idx);
            }
            if empty {
                if stack.is_empty() {
                    root_done = true;
                }
            } else {
                stack.push(idx);
            }
            continue;
        }
        match event {
            Event::End(_) => {
                stack.pop();
                if stack.is_empty() {
                    root_done = true;
                }
            }
            Event::Text(t) => {
                let text = t.xml10_content().map_err(xml_err)?;
                append_text(&mut elements, &stack, &text);
            }
            Event::CData(c) => {
                let text = c.decode().map_err(xml_err)?;
                append_text(&mut elements, &stack, &text);
            }
            Event::GeneralRef(r) => {
                let resolved: Cow<'_, str> = match r.resolve_char_ref().map_err(xml_err)? {
                    Some(ch) => Cow::Owned(ch.to_string()),
                    None => {
                        let name = r.decode().map_err(xml_err)?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(s) => Cow::Borrowed(s),
                            None => {
                                return Err(SiprecError::Xml(format!("undefined entity &{name};")))
                            }
                        }
                    }
                };
                append_text(&mut elements, &stack, &resolved);
            }
            Event::DocType(_) => return Err(SiprecError::DtdRefused),
            Event::Eof => break,
            // XML declaration, processing instructions, comments.
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(SiprecError::Xml("document ends inside an element".into()));
    }
    if elements.is_empty() {
        return Err(SiprecError::Empty);
    }
    Ok(Tree { elements })
}

pub(super) fn append_text(elements: &mut [Element], stack: &[usize], text: &str) {
    if let Some(e) = stack.last().and_then(|i| elements.get_mut(*i)) {
        e.text.push_str(text);
    }
}
